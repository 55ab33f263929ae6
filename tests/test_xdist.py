"""Experiments in parallel with pytest-xdist: one worker per experiment, one deploy each."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fmbench.xdist import auto_workers, experiment_of, param_id
from tests.e2e_support import BENCHMARK_TEST, RECORDING_BACKEND, read_lines, recording_config, rows

CASES = {"alpha-p-c1": "alpha", "alpha-p-c2": "alpha", "be-ta-p-c1": "be-ta"}


def test_param_id_and_experiment_of_a_node_id() -> None:
    assert param_id("b/test_x.py::test_benchmark[alpha-p-c1]") == "alpha-p-c1"
    assert param_id("b/test_x.py::test_other") is None
    assert experiment_of("t.py::test[alpha-p-c2]", CASES) == "alpha"
    assert experiment_of("t.py::test[be-ta-p-c1]", CASES) == "be-ta"
    # a user's own parametrize joins the case id with "-"
    assert experiment_of("t.py::test[be-ta-p-c1-fast]", CASES) == "be-ta"
    assert experiment_of("t.py::test[x-alpha-p-c1]", CASES) == "alpha"
    assert experiment_of("t.py::test[unrelated]", CASES) is None


def test_auto_workers_is_one_per_experiment_capped_by_cpus() -> None:
    assert auto_workers(3, cpus=16) == 3
    assert auto_workers(5, cpus=2) == 2
    assert auto_workers(0, cpus=2) == 1


@pytest.fixture
def recording(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makepyfile(recording_backend=RECORDING_BACKEND, test_bench=BENCHMARK_TEST)
    pytester.syspathinsert()
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    log = pytester.path / "lifecycle.log"
    monkeypatch.setenv("FMBENCH_TEST_LOG", str(log))
    return log


def test_each_experiment_runs_on_one_worker_and_deploys_once(
        pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config(concurrency="[1, 2, 3]"))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                           "-n", "2", "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out")
    result.assert_outcomes(passed=6)
    log = read_lines(recording)
    assert sorted(log) == ["deploy alpha", "deploy beta", "teardown alpha", "teardown beta"]
    records = rows(pytester.path / "out" / "records-gw0.jsonl") + rows(
        pytester.path / "out" / "records-gw1.jsonl")
    by_experiment = {}
    for record in records:
        by_experiment.setdefault(record["experiment"], set()).add(record["worker"])
    assert sorted(by_experiment) == ["alpha", "beta"]
    assert all(len(workers) == 1 for workers in by_experiment.values())
    assert by_experiment["alpha"] != by_experiment["beta"]


def test_auto_gives_one_worker_per_experiment(pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config())
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                           "-n", "auto", "--fmbench-config=cfg.yml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*2 workers*"])
