"""The spend guard: the estimate before the first deploy, the ledger, and --fmbench-max-cost."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from pytest_fmbench.cases import expand_cases
from pytest_fmbench.config.model import Config
from pytest_fmbench.config.pricing import Price
from pytest_fmbench.safety.spend import (
    ASSUMED_REQUEST_S,
    SpendGuard,
    SpendLedger,
    estimate,
    estimate_lines,
    spent,
)
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config


def config_of(text: str) -> Config:
    return Config.model_validate(yaml.safe_load(textwrap.dedent(text)))


SAGEMAKER = config_of("""\
    datasets:
      filters: [{payload_file: p.jsonl, max_length_in_tokens: 1000}]
    inference_parameters: {short: {max_new_tokens: 100}}
    load: {pattern: concurrency, duration_s: 600, request_timeout_s: 30, warmup_requests: 0}
    experiments:
      - name: sm
        backend: sagemaker
        instance_type: ml.g5.xlarge
        instance_count: 2
        payload_files: [p.jsonl]
        concurrency_levels: [1, 4]
      - name: claude
        backend: bedrock
        model_id: anthropic.claude-3-haiku
        inference_spec: {parameter_set: short}
        payload_files: [p.jsonl]
        concurrency_levels: [1]
    """)
INSTANCE = Price("instance", "ml.g5.xlarge", "test", hourly=1.5, instance_count=2)
TOKENS = Price("token", "anthropic.claude-3-haiku", "test", input_per_1k=0.25, output_per_1k=1.25)
PRICES = {"sm": INSTANCE, "claude": TOKENS}


def test_estimate_prices_deploy_and_duration_bound_cases_and_every_token() -> None:
    sm, claude = estimate(SAGEMAKER, expand_cases(SAGEMAKER), PRICES)
    # At least a 10-minute deploy plus two 600 s cases on two instances at 1.5 USD/h.
    assert sm.low_usd == pytest.approx(3.0 * (600 + 2 * 600) / 3600)
    assert sm.high_usd is not None and sm.high_usd > sm.low_usd
    # At most: a rate-free duration-bound closed loop at c=1 (a 50 ms floor a request) of
    # 1000-token prompts and 100-token answers.
    requests = 1 / 0.05 * 600
    assert claude.high_usd == pytest.approx(requests * (1000 * 0.25 + 100 * 1.25) / 1000)
    lines = estimate_lines([sm, claude], 25.0)
    assert lines[0].startswith("[fmbench] estimated cost of the 3 selected case(s): $1.50 to ")
    assert "spend limit $25.00" in lines[0]
    assert "sm: 2 case(s), ml.g5.xlarge: 1.5 USD/h × 2 (test)" in lines[1]


def test_unpriced_experiments_say_so() -> None:
    (sm, _) = estimate(SAGEMAKER, expand_cases(SAGEMAKER), {"sm": None, "claude": TOKENS})
    assert sm.low_usd is None and "not priced" in sm.line()


def test_spent_counts_instance_hours_until_teardown_or_now_and_tokens() -> None:
    rows = [{"event": "up", "experiment": "a", "hourly": 3600.0, "at": 100.0},
            {"event": "down", "experiment": "a", "at": 110.0},
            {"event": "up", "experiment": "b", "hourly": 36.0, "at": 100.0},
            {"event": "tokens", "experiment": "c", "usd": 0.5}]
    assert spent(rows, now=200.0) == pytest.approx(10.0 + 1.0 + 0.5)


def test_the_ledger_is_shared_by_the_processes_of_a_run(tmp_path: Path) -> None:
    SpendLedger(tmp_path, "gw0").tokens("a", 1.25)
    SpendLedger(tmp_path, "gw1").tokens("b", 0.75)
    assert SpendLedger(tmp_path).spent() == pytest.approx(2.0)


def test_the_guard_stops_for_good_once_the_next_step_would_cross_the_limit(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path)
    guard = SpendGuard(10.0, SAGEMAKER, ledger, PRICES)
    sm = SAGEMAKER.experiments[0]
    assert guard.deploy_commitment(sm) == pytest.approx(3.0 * 600 / 3600)
    assert guard.check("deploying 'sm'", guard.deploy_commitment(sm)) is None
    ledger.tokens("claude", 9.6)
    case = expand_cases(SAGEMAKER)[0]
    # A duration-bound case commits its duration (and one request) at the endpoint's price.
    commitment = guard.case_commitment(case, 100)
    assert commitment == pytest.approx(3.0 * (600 + ASSUMED_REQUEST_S) / 3600)
    reason = guard.check(f"case {case.id}", commitment)
    assert reason is not None and "$9.60 spent" in reason and "spend limit $10.00" in reason
    assert guard.check("anything", 0.0) == reason  # stopped for good
    assert SpendLedger(tmp_path).stop_reasons() == [reason]


def test_a_finished_token_priced_case_spends_its_tokens(tmp_path: Path) -> None:
    from pytest_fmbench.load.records import RequestRecord

    ledger = SpendLedger(tmp_path)
    guard = SpendGuard(10.0, SAGEMAKER, ledger, PRICES)

    def record(prompt: int, completion: int, error: str = "") -> RequestRecord:
        return RequestRecord(run_id="r", experiment="claude", payload_file="p.jsonl",
                             concurrency=1, case_id="c", request_id=0, scheduled_ns=0,
                             sent_ns=0, last_byte_ns=2_000_000_000, prompt_tokens=prompt,
                             completion_tokens=completion, error=error)

    guard.record_case("claude", [record(1000, 100), record(2000, 0, error="timeout")])
    # Every request's tokens at 0.25 / 1.25 USD per 1k (a failed request's prompt too).
    assert ledger.spent() == pytest.approx((1000 * 0.25 + 100 * 1.25 + 2000 * 0.25) / 1000)


def test_waves_commit_their_rounds_at_the_slowest_latency_seen(tmp_path: Path) -> None:
    cfg = config_of("""\
        datasets: {filters: [{payload_file: p.jsonl}]}
        experiments:
          - {name: a, backend: openai, openai: {base_url: "http://x"}, price_per_hour: 3600,
             payload_files: [p.jsonl], concurrency_levels: [4]}
        """)
    price = Price("instance", "a", "test", hourly=3600.0)
    guard = SpendGuard(100.0, cfg, SpendLedger(tmp_path), {"a": price})
    guard.observe("a", [0.5, 2.0, 1.0])
    # 40 requests at 4 in flight: 10 rounds of 2 s at 1 USD/s.
    assert guard.case_commitment(expand_cases(cfg)[0], 40) == pytest.approx(20.0)


def test_the_estimate_is_printed_under_collect_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=openai_config("http://127.0.0.1:9"))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--collect-only", "-q",
                                "-k", "alpha")
    result.stdout.fnmatch_lines(["[[]fmbench[]] estimated cost of the 4 selected case(s): $0.00 to $*",
                                 "  alpha: 4 case(s), ml.g5.xlarge: 1 USD/h (experiment price_per_hour): *"])
    assert "beta" not in result.stdout.str()


def test_max_cost_stops_before_a_case_that_would_cross_it_and_the_report_says_so(
        pytester: pytest.Pytester) -> None:
    """At 3.6M USD/h (1,000 USD/s) even one wave of a millisecond commits more than 1 USD."""
    text = openai_config("URL").replace("price_per_hour: 1.0", "price_per_hour: 3600000")
    with FakeOpenAIServer(ServerBehaviour(completion_tokens=4)) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=text.replace("URL", server.url))
        result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "-k", "alpha",
                                    "--fmbench-max-cost=1", "--fmbench-results-dir=out", "-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(skipped=4)
    out = result.stdout.str()
    assert "spend limit $1.00 (--fmbench-max-cost)" in out and "STOPPED: spend limit" in out
    assert "missing cases (4)" in out
    events = [json.loads(line) for line in (pytester.path / "out" / "endpoints.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["deploy", "teardown"]  # torn down at once


def test_a_bad_max_cost_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=openai_config("http://127.0.0.1:9"))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-max-cost=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fmbench-max-cost" in result.stderr.str()
