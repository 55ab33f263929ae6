"""One run per results dir (REVIEW H5), and a session finish that never raises (REVIEW L9)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.report.history import BENCHMARK_FILE, resolve_baseline
from pytest_fmbench.results_dir import (
    PREVIOUS_DIR,
    held_run_id,
    previous_runs,
    set_aside_previous_run,
)
from pytest_fmbench.run import BenchmarkRun, cleanup_orphans
from tests.e2e_support import BENCHMARK_TEST, RECORDING_BACKEND, recording_config

ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist", "--fmbench-config=cfg.yml")


def _old_run(folder: Path, run_id: str, *, run_json: bool = True) -> None:
    (folder / "logs").mkdir(parents=True)
    (folder / "payloads").mkdir()
    (folder / "payloads" / "p.jsonl").write_text("{}\n")
    (folder / "records.jsonl").write_text(json.dumps({"run_id": run_id}) + "\n")
    (folder / "endpoints-gw0.jsonl").write_text("")
    (folder / "logs" / "fmbench.log").write_text("old\n")
    (folder / BENCHMARK_FILE).write_text("{}")
    if run_json:
        (folder / "run.json").write_text(json.dumps({"run_id": run_id}))


# -- unit ------------------------------------------------------------------------------------

def test_an_earlier_run_moves_to_previous_and_payloads_stay(tmp_path: Path) -> None:
    _old_run(tmp_path, "20260101T000000-aaaaaa")
    moved = set_aside_previous_run(tmp_path)
    assert moved == tmp_path / PREVIOUS_DIR / "20260101T000000-aaaaaa"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payloads", PREVIOUS_DIR]
    assert (moved / "records.jsonl").exists() and (moved / "logs" / "fmbench.log").exists()
    assert (tmp_path / "payloads" / "p.jsonl").exists()  # the cache is reused
    assert set_aside_previous_run(tmp_path) is None  # nothing left to move


def test_a_crashed_run_is_named_by_its_records(tmp_path: Path) -> None:
    _old_run(tmp_path, "20260101T000000-bbbbbb", run_json=False)
    assert held_run_id(tmp_path) == "20260101T000000-bbbbbb"


def test_a_run_id_that_is_a_path_is_not_trusted(tmp_path: Path) -> None:
    _old_run(tmp_path, "../../escape")
    assert held_run_id(tmp_path).startswith("unknown-")


def test_a_directory_no_run_wrote_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert set_aside_previous_run(tmp_path) is None
    assert (tmp_path / "notes.txt").exists()


def test_only_the_newest_earlier_runs_are_kept(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / "run.json").write_text(json.dumps({"run_id": f"run-{index}"}))
        moved = set_aside_previous_run(tmp_path, keep=3)
        assert moved is not None
        os.utime(moved, (1_000_000 + index, 1_000_000 + index))
    assert [p.name for p in previous_runs(tmp_path)] == ["run-2", "run-3", "run-4"]


def test_latest_finds_the_run_set_aside(tmp_path: Path) -> None:
    _old_run(tmp_path / "ci", "20260101T000000-cccccc")
    set_aside_previous_run(tmp_path / "ci")
    found = resolve_baseline("latest", invocation_dir=tmp_path, results_root=tmp_path / "results",
                             results_dir=tmp_path / "ci")
    assert found == tmp_path / "ci" / PREVIOUS_DIR / "20260101T000000-cccccc" / BENCHMARK_FILE


def test_orphan_cleanup_of_a_renamed_experiment_warns_and_never_raises(tmp_path: Path) -> None:
    (tmp_path / "cfg.yml").write_text(recording_config(concurrency="[1]", iters=1))
    config = load_config(tmp_path / "cfg.yml", {}, known_backends=["recording"])
    lines: list[str] = []
    run = BenchmarkRun(config, run_id="r", results_dir=tmp_path / "out", log=lines.append)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "endpoints-gw0.jsonl").write_text(json.dumps(
        {"experiment": "renamed-since", "event": "deploy", "ok": True, "deployed_by_us": True,
         "endpoint": {"pid": 1}}) + "\n" + "{torn")
    assert cleanup_orphans(run) == []
    assert any("could not clean up after a crashed worker ('renamed-since')" in line for line in lines)


# -- end to end ------------------------------------------------------------------------------

@pytest.fixture
def recording(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(recording_backend=RECORDING_BACKEND, test_bench=BENCHMARK_TEST)
    pytester.syspathinsert()
    monkeypatch.setenv("FMBENCH_TEST_LOG", str(pytester.path / "lifecycle.log"))
    monkeypatch.setenv("FMBENCH_TEST_DELAY", "0.05")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".yml", cfg=recording_config(concurrency="[1]", iters=3))
    return pytester


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_a_reused_results_dir_reports_only_its_own_run_and_compares_with_the_first(
        recording: pytest.Pytester) -> None:
    first = recording.runpytest(*ARGS, "--fmbench-results-dir=ci")
    first.assert_outcomes(passed=2)
    ci = recording.path / "ci"
    first_id, first_requests = _results(ci)["run"]["run_id"], _results(ci)["requests"]
    # a stale worker event file of the first run, naming an experiment since renamed
    (ci / "endpoints-gw7.jsonl").write_text(json.dumps(
        {"experiment": "old-name", "event": "deploy", "ok": True, "deployed_by_us": True,
         "endpoint": {"pid": 1}}) + "\n")

    second = recording.runpytest(*ARGS, "--fmbench-results-dir=ci", "--fmbench-compare=latest",
                                 "--fmbench-compare-fail=latency_p95:+1000%")
    assert second.ret == pytest.ExitCode.OK, second.stdout.str()
    results = _results(ci)
    assert results["run"]["run_id"] != first_id
    assert results["requests"] == first_requests  # its own requests only, not both runs'
    assert {m["transactions"] for m in results["metrics"]} == {3}
    second.stdout.fnmatch_lines([(f"*compared with *ci/previous/{first_id}/benchmark.json: "
                                  "0 regression(s) in 2 common case(s)*")])
    assert "old-name" not in second.stdout.str()  # the stale event file is not rescanned
    assert (ci / PREVIOUS_DIR / first_id / "endpoints-gw7.jsonl").exists()
    assert (ci / "payloads").is_dir() and not (ci / PREVIOUS_DIR / first_id / "payloads").exists()


def test_an_unwritable_step_summary_fails_the_run_without_internal_error(
        recording: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(recording.path / "missing-dir" / "summary.md"))
    result = recording.runpytest(*ARGS, "--fmbench-results-dir=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*the CI step summary failed: FileNotFoundError*"])
    assert (recording.path / "out" / "report.md").exists()


def test_a_report_that_cannot_be_built_fails_the_run_even_without_budgets(
        recording: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("metrics exploded")

    monkeypatch.setattr("pytest_fmbench.report.analyze", broken)
    result = recording.runpytest(*ARGS, "--fmbench-results-dir=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*report failed: RuntimeError: metrics exploded*",
                                 "*the report could not be built: failing the run*"])
