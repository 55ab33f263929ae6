"""Experiments in parallel with pytest-xdist: one worker per experiment, one deploy each."""

from __future__ import annotations

import os
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
    # The backend from here; the plugin from the tree under test (a worktree, not the venv's).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(pytester.path), *filter(None, [os.environ.get("PYTHONPATH")])]))
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


def _run_dir(base: Path) -> Path:
    return base


def _span_s(results: Path) -> float:
    """Wall time of the benchmark itself: first deploy start to last teardown end."""
    events = []
    for path in results.glob("endpoints*.jsonl"):
        events += rows(path)
    return (max(e["end_ns"] for e in events) - min(e["start_ns"] for e in events)) / 1e9


def _metrics(results: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(results / "all_metrics.csv") as handle:
        return {f"{r['experiment_name']}|{r['payload_file']}|{r['concurrency']}": r
                for r in csv.DictReader(handle)}


def test_three_experiments_in_parallel_take_half_the_time_and_report_the_same(
        pytester: pytest.Pytester, recording: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e_support import experiment_block

    monkeypatch.setenv("FMBENCH_TEST_DELAY", "0.1")
    pytester.makefile(".yml", cfg=recording_config(iters=8, extra=experiment_block("gamma")))
    args = ("-p", "no:randomly", "-p", "no:cacheprovider", "--fmbench-config=cfg.yml")
    serial = pytester.runpytest_subprocess(*args, "-n", "0", "--fmbench-results-dir=serial")
    serial.assert_outcomes(passed=6)
    recording.unlink()
    parallel = pytester.runpytest_subprocess(*args, "-n", "3", "--fmbench-results-dir=parallel")
    parallel.assert_outcomes(passed=6)
    assert sorted(read_lines(recording)) == sorted(
        f"{event} {name}" for name in ("alpha", "beta", "gamma") for event in ("deploy", "teardown"))
    serial_s, parallel_s = _span_s(pytester.path / "serial"), _span_s(pytester.path / "parallel")
    assert parallel_s <= serial_s / 2, (serial_s, parallel_s)
    one, other = _metrics(pytester.path / "serial"), _metrics(pytester.path / "parallel")
    assert sorted(one) == sorted(other) and len(one) == 6
    for key in one:
        assert one[key]["transactions"] == other[key]["transactions"]
        assert float(one[key]["error_rate"]) == float(other[key]["error_rate"]) == 0.0
        assert float(other[key]["latency_p50"]) == pytest.approx(float(one[key]["latency_p50"]), rel=0.25)


def test_a_killed_worker_loses_only_its_case_and_fails_the_run(
        pytester: pytest.Pytester, recording: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e_support import alive, experiment_block

    monkeypatch.setenv("FMBENCH_TEST_CRASH_FLAG", str(pytester.path / "crashed"))
    pytester.makefile(".yml", cfg=recording_config(
        extra=experiment_block("crashy", markers="[crash]")))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2",
                                           "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret != 0
    output = result.stdout.str()
    assert "missing cases (1)" in output
    assert "test_benchmark[crashy-payload_a-c1]" in output.split("missing cases (1)")[1]
    report = (pytester.path / "out" / "report.md").read_text()
    assert "crashy-payload_a-c1" in report.split("## Missing cases")[1]
    measured = {line.split(",")[0] for line in (pytester.path / "out" / "all_metrics.csv").read_text().splitlines()[1:]}
    assert {"alpha", "beta"} <= measured
    # The crashed worker's endpoint was torn down by the controller; every other one by its worker.
    assert "orphan-teardown crashy" in read_lines(recording)
    for path in (pytester.path / "out").glob("endpoints*.jsonl"):
        for event in rows(path):
            if event["event"] == "deploy" and event["endpoint"].get("pid"):
                assert not alive(event["endpoint"]["pid"]), event


def _reported_cases(results: Path) -> list[str]:
    import json

    data = json.loads((results / "results.json").read_text())
    return sorted(f"{m['experiment_name']}-{m['payload_file'].removesuffix('.jsonl')}-c{m['concurrency']}"
                  for m in data["metrics"])


def test_subsets_compose_with_xdist_into_one_report_of_what_ran(
        pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config())
    pytester.makepyfile(test_bench="""
        def test_benchmark(fmbench_load, fmbench_case):
            result = fmbench_load()
            assert fmbench_case.id != "beta-payload_a-c2", "this one fails"
        """)
    base = ("-p", "no:randomly", "--fmbench-config=cfg.yml")
    first = pytester.runpytest_subprocess(*base, "-n", "2", "-k", "c2", "--fmbench-results-dir=first")
    first.assert_outcomes(passed=1, failed=1)
    assert _reported_cases(pytester.path / "first") == ["alpha-payload_a-c2", "beta-payload_a-c2"]
    again = pytester.runpytest_subprocess(*base, "-n", "2", "--lf", "--fmbench-results-dir=again")
    again.assert_outcomes(failed=1)
    assert _reported_cases(pytester.path / "again") == ["beta-payload_a-c2"]
    assert "missing cases" not in again.stdout.str()


@pytest.mark.parametrize(("version", "refused"), [
    ("3.6.0", False), ("3.8.0", False), ("4.0.0", True), ("2.5.0", True), ("dev", True)])
def test_only_the_tested_xdist_major_runs_experiments_in_parallel(version: str, refused: bool) -> None:
    from pytest_fmbench.xdist import untested_xdist

    problem = untested_xdist(version)
    assert (problem is not None) == refused
    if problem:
        assert f"pytest-xdist {version} is installed" in problem and "fix: pip install" in problem
