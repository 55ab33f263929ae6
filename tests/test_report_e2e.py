"""End-to-end: the report and the budget gate through real pytest runs (pytester, fake server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_fmbench.report.plots import PLOTS
from pytest_fmbench.report.timeline import BOX_PLOT
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

GENEROUS = """\
metrics: {dataset_of_interest: en_1-300}
report: {latency_budget: 30, cost_per_10k_txn_budget: 1000, error_rate_budget: 0}
"""
IMPOSSIBLE = """\
metrics: {dataset_of_interest: en_1-300}
report: {latency_budget: 0.0001, cost_per_10k_txn_budget: 1000, error_rate_budget: 0}
"""


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as running:
        yield running


def bench(pytester: pytest.Pytester, server: FakeOpenAIServer, report: str) -> pytest.Pytester:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=openai_config(server.url, report=report))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out", *args)


def test_generous_budgets_pass_and_write_the_whole_report(pytester: pytest.Pytester,
                                                          server: FakeOpenAIServer) -> None:
    result = run(bench(pytester, server, GENEROUS))
    assert result.ret == 0, result.stdout.str()
    out = pytester.path / "out"
    for name in ("report.md", "results.json", "all_metrics.csv", "per_inference_request_results.csv"):
        assert (out / name).is_file(), name
    # The eight plots, the prompt-length box plot and one timeline per experiment (telemetry).
    drawn = sorted(p.name for p in (out / "plots").glob("*.png"))
    timelines = [name for name in drawn if name.startswith("timeline-")]
    assert sorted(set(drawn) - set(timelines)) == sorted([name for name, _ in PLOTS] + [BOX_PLOT])
    assert timelines
    result.stdout.fnmatch_lines([
        "*= pytest-fmbench =*",
        "best option (dataset of interest en_1-300): * payload_en_1-300 c=*",
        "budget gate (best): PASSED*",
        "experiment*payload*c*req*budgets",
        f"report: {out / 'report.md'}",
    ])
    data = json.loads((out / "results.json").read_text())
    assert data["gate"]["passed"] and data["requests"] == 24  # 8 cases × 2 waves × c
    assert len(data["metrics"]) == 8


def test_a_budget_no_combination_meets_fails_the_run_naming_violations(
        pytester: pytest.Pytester, server: FakeOpenAIServer) -> None:
    result = run(bench(pytester, server, IMPOSSIBLE))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "budget gate (best): FAILED: no combination meets every budget*",
        "violations (*):",
    ])
    lines = [l.strip() for l in result.outlines]
    pattern = re.compile(r"^latency_p95 [0-9.e-]+ s > 0\.0001 s: (alpha|beta) payload_en_(1-300|300-5000) c=[12]$")
    assert sum(bool(pattern.match(l)) for l in lines) == 8
    assert "8 passed" in result.stdout.str()  # the cases pass; the gate fails the run
    text = (pytester.path / "out" / "report.md").read_text()
    assert "**No combination meets every budget**" in text


def test_command_line_budget_overrides_the_config(pytester: pytest.Pytester, server: FakeOpenAIServer) -> None:
    result = run(bench(pytester, server, IMPOSSIBLE), "--fmbench-budget", "latency_p95=30")
    assert result.ret == 0, result.stdout.str()


def test_gate_every_fails_each_violating_case_with_its_numbers(pytester: pytest.Pytester,
                                                               server: FakeOpenAIServer) -> None:
    result = run(bench(pytester, server, GENEROUS), "--fmbench-gate=every",
                 "--fmbench-budget", "transactions_per_minute=1e9")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=8)
    result.stdout.fnmatch_lines([
        "*1 budget violation:*",
        "*transactions_per_minute * txn/min < 1000000000.00 txn/min: alpha payload_en_1-300 c=1*",
    ])


@pytest.mark.parametrize(("report", "args", "message"), [
    ("budgets: {ttft_p96: 0.5}\n", (), "budget on unknown metric 'ttft_p96'"),
    ("budgets: {ttft_p95: soon}\n", (), "budget 'soon' for ttft_p95 is not a number"),
    ("", ("--fmbench-budget", "latency_p95=fast"), "budget 'fast' for latency_p95 is not a number"),
])
def test_budget_mistakes_are_usage_errors(pytester: pytest.Pytester, server: FakeOpenAIServer,
                                          report: str, args: tuple[str, ...], message: str) -> None:
    result = run(bench(pytester, server, report), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert not (pytester.path / "out").exists()  # nothing ran, nothing was deployed


def test_unknown_price_is_a_usage_error_before_anything_runs(pytester: pytest.Pytester,
                                                             server: FakeOpenAIServer) -> None:
    bench(pytester, server, "")
    config = (pytester.path / "cfg.yml").read_text()
    config = config.replace("instance_type: ml.g5.xlarge\n    price_per_hour: 1.0",
                            "instance_type: ml.g9.mega").replace(
        "instance_type: ml.g5.xlarge\n            price_per_hour: 1.0", "instance_type: ml.g9.mega")
    (pytester.path / "cfg.yml").write_text(config)
    assert "ml.g9.mega" in config
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    stderr = result.stderr.str()
    assert "no price for instance type 'ml.g9.mega'" in stderr
    assert "price_per_hour" in stderr


def test_collect_only_writes_no_report(pytester: pytest.Pytester, server: FakeOpenAIServer) -> None:
    result = run(bench(pytester, server, GENEROUS), "--collect-only", "-q")
    assert result.ret == 0
    assert not (pytester.path / "out" / "report.md").exists()
    assert "pytest-fmbench" not in result.stdout.str()


def test_under_xdist_the_controller_merges_every_worker(pytester: pytest.Pytester,
                                                        server: FakeOpenAIServer) -> None:
    pytest.importorskip("xdist")
    bench(pytester, server, GENEROUS)
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2",
                                "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    out = Path(pytester.path / "out")
    assert len(list(out.glob("records*.jsonl"))) >= 2
    data = json.loads((out / "results.json").read_text())
    assert data["requests"] == 24 and len(data["metrics"]) == 8
    result.stdout.fnmatch_lines(["budget gate (best): PASSED*"])
