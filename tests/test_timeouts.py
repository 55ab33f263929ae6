"""Benchmark cases carry their own pytest-timeout limit: a suite-wide timeout never cuts a
deploy or a case short (issue: a 300 s test-suite timeout killed 600 s rate cases)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml

from pytest_fmbench.config.model import Config
from pytest_fmbench.timeouts import (
    MARGIN_FACTOR,
    SETUP_MARGIN_S,
    case_timeout_s,
    parse_case_timeout,
)
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, rows

SERVER = f"{sys.executable} -m pytest_fmbench.testing.openai_server --port $FMBENCH_PORT"


def one_experiment(experiment: str, load: str = "") -> Config:
    text = textwrap.dedent("""\
        datasets:
          filters: [{payload_file: p.jsonl}]
        load: {%s}
        experiments:
        """) % load + textwrap.indent(textwrap.dedent(experiment), "  ")
    return Config.model_validate(yaml.safe_load(text))


BYO = """\
    - name: byo
      backend: openai
      deploy: no
      openai: {base_url: "http://127.0.0.1:9"}
      payload_files: [p.jsonl]
      concurrency_levels: [4, 1]
    """


def expected(body_s: float) -> float:
    return float(int(-(-(body_s * MARGIN_FACTOR + SETUP_MARGIN_S) // 1)))


def test_waves_bound_is_the_most_waves_times_the_request_timeout() -> None:
    config = one_experiment(BYO, "max_iters_per_combination: 10, request_timeout_s: 30, "
                                 "warmup_requests: 2")
    # 2 warm-up requests + 10 waves of at most 30 s each + a process teardown (60 s).
    assert case_timeout_s(config, config.experiments[0]) == expected(2 * 30 + 10 * 30 + 60)


def test_a_duration_bound_load_counts_its_duration_warmup_and_drain() -> None:
    config = one_experiment(BYO, "pattern: rate, rate: 5, duration_s: 600, warmup_s: 10, "
                                 "request_timeout_s: 20, warmup_requests: 0")
    assert case_timeout_s(config, config.experiments[0]) == expected(10 + 600 + 20 + 60)


def test_a_request_bound_closed_loop_uses_its_fewest_in_flight() -> None:
    config = one_experiment(BYO, "pattern: concurrency, requests: 100, request_timeout_s: 10, "
                                 "warmup_requests: 0")
    # Concurrency levels 4 and 1: at 1 in flight, 100 requests are 100 rounds of 10 s.
    assert case_timeout_s(config, config.experiments[0]) == expected(100 * 10 + 60)


def test_the_case_deadline_caps_the_load_bound() -> None:
    config = one_experiment(BYO, "max_iters_per_combination: 100, request_timeout_s: 60, "
                                 "warmup_requests: 0, max_case_s: 120")
    # 100 waves of 60 s would be 6000 s; the case stops at 120 s (+10 s to kill its processes).
    assert case_timeout_s(config, config.experiments[0]) == expected(120 + 10 + 60)


def test_sagemaker_deploys_count_their_deploy_timeout_and_retries() -> None:
    config = one_experiment("""\
        - name: sm
          backend: sagemaker
          instance_type: ml.g5.xlarge
          sagemaker: {deploy_timeout_s: 1800, retry: {max_retries: 2, max_backoff_s: 5}}
          payload_files: [p.jsonl]
          concurrency_levels: [1]
        """, "max_iters_per_combination: 3, request_timeout_s: 10, warmup_requests: 1")
    request = 10 * 3 + 2 * 5  # three attempts, two back-offs
    assert case_timeout_s(config, config.experiments[0]) == expected(
        1800 + request + 3 * request + 900)


def test_a_slow_sagemaker_deploy_is_never_under_a_common_suite_timeout() -> None:
    config = one_experiment("""\
        - name: sm
          backend: sagemaker
          instance_type: ml.g5.xlarge
          payload_files: [p.jsonl]
          concurrency_levels: [1]
        """)
    timeout = case_timeout_s(config, config.experiments[0])
    assert timeout is not None and timeout > 3600 + 900  # the default deploy timeout, teardown


@pytest.mark.parametrize(("text", "value"), [
    (None, "auto"), ("auto", "auto"), ("AUTO", "auto"), ("none", None), ("0", None),
    ("7200", 7200.0), ("1.5", 1.5)])
def test_parse_case_timeout(text: str | None, value: object) -> None:
    assert parse_case_timeout(text) == value


@pytest.mark.parametrize("text", ["soon", "-5", "inf", "nan"])
def test_parse_case_timeout_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_case_timeout(text)


SLOW_DEPLOY = textwrap.dedent(f"""\
    general: {{name: slow}}
    datasets:
      synthetic: {{records: 20, seed: 1}}
      max_prompts_per_file: 4
      filters: [{{payload_file: p.jsonl}}]
    inference_parameters:
      fast: {{max_new_tokens: 4}}
    load: {{pattern: concurrency, duration_s: 8, request_timeout_s: 5, warmup_requests: 1}}
    experiments:
      - name: slow
        backend: openai
        inference_spec: {{parameter_set: fast}}
        openai:
          deploy:
            command: "sleep 8; exec {SERVER} --ttft 0.01 --token-delay 0.01"
            startup_timeout_s: 60
        payload_files: [p.jsonl]
        concurrency_levels: [2]
    """)


def test_a_suite_timeout_never_cuts_a_slow_deploy_or_a_long_case_short(
        pytester: pytest.Pytester) -> None:
    """timeout = 5 in the ini; the deploy takes 8 s and the load runs 8 s: the case passes."""
    pytester.makeini("[pytest]\ntimeout = 5\n")
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=SLOW_DEPLOY)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                "--fmbench-results-dir=out", "-v")
    result.assert_outcomes(passed=1)
    assert "Timeout" not in result.stdout.str()
    out = pytester.path / "out"
    records = rows(out / "records.jsonl")
    spans = [(r["last_byte_ns"] - r["sent_ns"]) / 1e9 for r in records]
    assert records and all(r["error"] == "" for r in records)
    # The load ran its whole 8 s, not the 5 s the suite timeout allowed ...
    first = min(r["scheduled_ns"] for r in records)
    last = max(r["last_byte_ns"] for r in records)
    assert (last - first) / 1e9 > 7.5, spans
    # ... and the report counts every request it made.
    results = json.loads((out / "results.json").read_text())
    assert results["requests"] == len(records)
    assert sum(m["transactions"] for m in results["metrics"]) == len(records)


def test_an_explicit_case_timeout_wins_over_the_derived_one(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntimeout = 600\n")
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=SLOW_DEPLOY)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-case-timeout=3",
                                "--fmbench-results-dir=out", "-v")
    result.assert_outcomes(errors=1)
    assert "Timeout (>3.0s)" in result.stdout.str()


def test_a_bad_case_timeout_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=SLOW_DEPLOY)
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                                "--fmbench-case-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fmbench-case-timeout" in result.stderr.str() and "Traceback" not in result.stderr.str()
