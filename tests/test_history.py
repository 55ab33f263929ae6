"""History and CI outputs: pytest-benchmark JSON, regressions, JUnit properties, step summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pytest_fmbench.errors import ConfigError
from pytest_fmbench.report.ci import junit_properties, step_summary_markdown, write_step_summary
from pytest_fmbench.report.history import (
    Threshold,
    benchmark_document,
    compare,
    parse_thresholds,
    resolve_baseline,
)
from pytest_fmbench.report.session import SessionReport
from tests.e2e_support import BENCHMARK_TEST, RECORDING_BACKEND, recording_config


def test_thresholds_parse_both_directions_aliases_and_absolute_amounts() -> None:
    assert parse_thresholds(["latency_p95:+10%,tpm:-10%", "cost:+0.5"]) == [
        Threshold("latency_p95", "+", 10.0, True),
        Threshold("transactions_per_minute", "-", 10.0, True),
        Threshold("cost_per_10k_txn", "+", 0.5, False),
    ]


@pytest.mark.parametrize("spec", ["latency_p95:10%", "latency_p95", "nonsense:+5%"])
def test_bad_thresholds_are_clear_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_thresholds([spec])
    assert "--fmbench-compare-fail" in error.value.render()


def test_a_20_percent_regression_trips_a_10_percent_threshold_and_5_percent_does_not() -> None:
    thresholds = parse_thresholds(["latency_p95:+10%,tpm:-10%"])
    baseline = {"a-p-c1": {"latency_p95": 1.0, "transactions_per_minute": 100.0}}
    slower = {"a-p-c1": {"latency_p95": 1.2, "transactions_per_minute": 100.0}}
    changes, unmatched = compare(slower, baseline, thresholds)
    assert [c.metric for c in changes if c.regressed] == ["latency_p95"] and unmatched == []
    assert "+20.0%" in next(c for c in changes if c.regressed).line()
    slightly = {"a-p-c1": {"latency_p95": 1.05, "transactions_per_minute": 95.0}}
    assert not any(c.regressed for c in compare(slightly, baseline, thresholds)[0])
    fewer = {"a-p-c1": {"latency_p95": 1.0, "transactions_per_minute": 80.0}}
    assert [c.metric for c in compare(fewer, baseline, thresholds)[0] if c.regressed] == [
        "transactions_per_minute"]
    # Faster is never a regression, and cases in one run only are listed, not failed.
    faster = {"a-p-c1": {"latency_p95": 0.5, "transactions_per_minute": 200.0}, "b-p-c1": {}}
    changes, unmatched = compare(faster, baseline, thresholds)
    assert not any(c.regressed for c in changes) and unmatched == ["b-p-c1"]


def test_benchmark_document_has_what_pytest_benchmark_compare_needs(tmp_path: Path) -> None:
    frame = pd.DataFrame({"experiment": ["a", "a", "a"], "payload_file": ["p.jsonl"] * 3,
                          "concurrency": [1, 1, 1], "ok": [True, True, False],
                          "latency_s": [1.0, 3.0, 9.0]})
    metrics = pd.DataFrame({"experiment": ["a"], "payload_file": ["p.jsonl"], "concurrency": [1],
                            "latency_p95": [2.9], "transactions_per_minute": [np.nan]})
    document = benchmark_document(frame, metrics, {"run_id": "r1"})
    (bench,) = document["benchmarks"]
    assert bench["name"] == "a-p-c1" and bench["params"]["concurrency"] == 1
    assert bench["stats"]["rounds"] == 2 and bench["stats"]["mean"] == 2.0
    assert bench["stats"]["min"] == 1.0 and bench["stats"]["max"] == 3.0
    assert bench["extra_info"]["latency_p95"] == 2.9
    assert bench["extra_info"]["transactions_per_minute"] is None  # undefined, not a number
    for key in ("machine_info", "commit_info", "datetime", "version"):
        assert key in document
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(document))
    shown = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()",
                            "compare", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "a-p-c1" in shown.stdout


def test_baseline_resolution(tmp_path: Path) -> None:
    root = tmp_path / "results" / "demo"
    for run in ("20260101T000000-aaaaaa", "20260102T000000-bbbbbb"):
        (root / run).mkdir(parents=True)
        (root / run / "benchmark.json").write_text("{}")
    found = resolve_baseline("latest", invocation_dir=tmp_path, results_root=root)
    assert found.parent.name == "20260102T000000-bbbbbb"
    assert resolve_baseline("20260101T000000-aaaaaa", invocation_dir=tmp_path,
                            results_root=root).parent.name == "20260101T000000-aaaaaa"
    assert resolve_baseline(str(root / "20260101T000000-aaaaaa"), invocation_dir=tmp_path,
                            results_root=root).is_file()
    with pytest.raises(ConfigError, match="no earlier run"):
        resolve_baseline("nope", invocation_dir=tmp_path, results_root=root)
    # A fixed --fmbench-results-dir: latest is the run it holds, else the newest under the root.
    fixed = tmp_path / "ci-results"
    assert resolve_baseline("latest", invocation_dir=tmp_path, results_root=root,
                            results_dir=fixed).parent.name == "20260102T000000-bbbbbb"
    fixed.mkdir()
    (fixed / "benchmark.json").write_text("{}")
    assert resolve_baseline("latest", invocation_dir=tmp_path, results_root=root,
                            results_dir=fixed).parent == fixed


def test_junit_properties_are_flat() -> None:
    props = junit_properties({"requests": 4, "tpm": 12.3456789, "ttft_p50": None,
                              "error_classes": {"timeout": 1}})
    assert props == [("fmbench.requests", 4), ("fmbench.tpm", 12.345679),
                     ("fmbench.error_classes.timeout", 1)]


def test_step_summary_appends_markdown(tmp_path: Path) -> None:
    outcome = SessionReport(passed=False, ran=True, report_path=tmp_path / "report.md",
                            lines=["budget gate (best): FAILED"])
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")
    assert write_step_summary(outcome, {"GITHUB_STEP_SUMMARY": str(target)}) == target
    text = target.read_text()
    assert text.startswith("earlier step\n") and "## pytest-fmbench: FAILED" in text
    assert step_summary_markdown(outcome) in text
    assert write_step_summary(outcome, {}) is None


# -- end to end --------------------------------------------------------------------------------

@pytest.fixture
def recording(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(recording_backend=RECORDING_BACKEND, test_bench=BENCHMARK_TEST)
    pytester.syspathinsert()
    monkeypatch.setenv("FMBENCH_TEST_LOG", str(pytester.path / "lifecycle.log"))
    monkeypatch.setenv("FMBENCH_TEST_DELAY", "0.2")
    pytester.makefile(".yml", cfg=recording_config(concurrency="[1]", iters=3))
    return pytester


ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist", "--fmbench-config=cfg.yml")


def _scaled_baseline(source: Path, target: Path, factor: float) -> Path:
    """A baseline whose latency_p95 is the run's divided by ``factor`` (so the run is slower)."""
    document = json.loads(source.read_text())
    for bench in document["benchmarks"]:
        for key in ("latency_p95", "latency_p95_ci_low", "latency_p95_ci_high"):
            if bench["extra_info"].get(key) is not None:
                bench["extra_info"][key] /= factor
    target.write_text(json.dumps(document))
    return target


def test_regressions_against_an_earlier_run_gate_the_exit_status(
        recording: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = recording.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    first = recording.runpytest(*ARGS, "--fmbench-results-dir=first", "--junitxml=junit.xml")
    first.assert_outcomes(passed=2)
    assert "## pytest-fmbench: PASSED" in summary.read_text()
    junit = (recording.path / "junit.xml").read_text()
    assert 'name="fmbench.requests" value="3"' in junit and 'name="fmbench.tpm"' in junit
    written = recording.path / "first" / "benchmark.json"
    # 3 requests a case: only a change well beyond the noise of so few trips (the 95 %
    # interval of the change must clear the threshold): twice as slow does.
    twenty = _scaled_baseline(written, recording.path / "b20.json", 2.0)
    five = _scaled_baseline(written, recording.path / "b5.json", 1.05)

    tripped = recording.runpytest(*ARGS, "--fmbench-results-dir=second",
                                  f"--fmbench-compare={twenty}",
                                  "--fmbench-compare-fail=latency_p95:+10%")
    assert tripped.ret == pytest.ExitCode.TESTS_FAILED
    tripped.stdout.fnmatch_lines(["*REGRESSION latency_p95 * (+*%, 95% CI of the change *) (limit latency_p95:+10%): alpha-payload_a-c1*"])
    assert "## Missing cases and comparison" in (recording.path / "second" / "report.md").read_text()

    within = recording.runpytest(*ARGS, "--fmbench-results-dir=third", f"--fmbench-compare={five}",
                                 "--fmbench-compare-fail=latency_p95:+10%")
    assert within.ret == pytest.ExitCode.OK
    within.stdout.fnmatch_lines(["*0 regression(s) in 2 common case(s)*"])


def test_latest_in_a_fixed_results_dir_is_the_run_it_held(recording: pytest.Pytester) -> None:
    first = recording.runpytest(*ARGS, "--fmbench-results-dir=ci")
    first.assert_outcomes(passed=2)
    assert (recording.path / "lifecycle.log").exists()  # deploys are logged there
    held = recording.path / "ci" / "benchmark.json"
    _scaled_baseline(held, held, 1.5)  # the run the directory holds was much faster
    again = recording.runpytest(*ARGS, "--fmbench-results-dir=ci", "--fmbench-compare=latest",
                                "--fmbench-compare-fail=latency_p95:+10%")
    # compared with the earlier run, not with itself (which would never regress)
    assert again.ret == pytest.ExitCode.TESTS_FAILED
    again.stdout.fnmatch_lines(["*compared with *ci*benchmark.json: 2 regression(s)*"])


def test_a_broken_baseline_is_a_usage_error_before_anything_runs(recording: pytest.Pytester) -> None:
    (recording.path / "broken.json").write_text("{not json")
    result = recording.runpytest(*ARGS, "--fmbench-compare=broken.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot read the baseline" in result.stderr.str()
    assert not (recording.path / "lifecycle.log").exists()  # nothing was deployed


def test_compare_fail_without_a_baseline_is_a_usage_error(recording: pytest.Pytester) -> None:
    result = recording.runpytest(*ARGS, "--fmbench-compare-fail=latency_p95:+10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fmbench-compare=latest" in result.stderr.str()
    missing = recording.runpytest(*ARGS, "--fmbench-compare=no-such-run")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    assert "no earlier run found" in missing.stderr.str()
