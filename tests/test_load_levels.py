"""Load levels (docs/load-levels.md): rate cases, sweep, SLO search, saturation stop, CIs and
the regression gate, checked against servers whose capacity is known."""

from __future__ import annotations

import heapq
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pytest_fmbench.cases import expand_cases
from pytest_fmbench.config.model import Config
from pytest_fmbench.errors import ConfigError
from pytest_fmbench.load.levels import SaturationWatch, SloSearch, knee, sweep_rates
from pytest_fmbench.load.rate import arrival_offsets
from pytest_fmbench.report.history import compare, parse_thresholds
from pytest_fmbench.stats import difference_ci, percentile_ci, proportion_rise
from pytest_fmbench.testing.aws_emulator import AwsRuntimeEmulator, aws_environment
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from pytest_fmbench.testing.sagemaker_control import SageMakerControl
from tests.e2e_support import BENCHMARK_TEST, rows
from tests.safety_support import ROLE, sagemaker_config, sagemaker_experiment

REPO = Path(__file__).resolve().parents[1]
INNER = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist")


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs import this checkout's package."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


# -- cases ---------------------------------------------------------------------------------------

def _config(experiment: dict[str, object], load: dict[str, object] | None = None) -> Config:
    return Config.model_validate({
        "datasets": {"filters": [{"payload_file": "p.jsonl", "min_length_in_tokens": 1,
                                  "max_length_in_tokens": 10}]},
        "load": load or {},
        "experiments": [{"name": "e", "backend": "openai", "payload_files": ["p.jsonl"],
                         **experiment}]})


def test_rate_levels_are_cases_with_stable_ids_after_the_concurrency_levels() -> None:
    config = _config({"concurrency_levels": [1, 4], "rates": [8, {"rate": 0.5, "arrival": "constant"}]},
                     {"requests": 20, "slo_search": {}, "sweep": {"levels": 3}})
    ids = [case.id for case in expand_cases(config)]
    assert ids == ["e-p-c1", "e-p-c4", "e-p-r8", "e-p-r0.5", "e-p-sweep", "e-p-slo"]
    # Only load levels: concurrency_levels may be left out; a repeated rate is refused.
    assert [c.id for c in expand_cases(_config({"rates": [2]}))] == ["e-p-r2"]
    with pytest.raises(ValueError, match="rates repeat"):
        _config({"rates": [2, 2]})
    with pytest.raises(ValueError, match="concurrency_levels"):
        _config({})


# -- pure logic ------------------------------------------------------------------------------

def test_saturation_watch_trips_on_a_growing_backlog_only() -> None:
    growing = SaturationWatch(500)
    assert any(growing.observe(i // 4) for i in range(500))
    assert "kept growing" in growing.reason
    rng = np.random.default_rng(1)
    stable = SaturationWatch(2000)  # a busy but stable queue wanders; it is not saturated
    assert not any(stable.observe(int(v)) for v in rng.poisson(20, 2000))


def test_slo_search_bisects_to_the_precision_and_stops_on_the_request_budget() -> None:
    true_rate = 37.0
    search = SloSearch(5.0, 100.0, precision=0.02, max_requests=10_000, per_level=100)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, rate <= true_rate, 100)
    assert search.result is not None and 0.98 * true_rate <= search.result <= true_rate
    assert "within 2%" in search.stopped
    short = SloSearch(5.0, 100.0, precision=0.001, max_requests=450, per_level=100)
    while (rate := short.next_rate()) is not None:
        short.observe(rate, rate <= true_rate, 100)
    assert short.spent == 400 and "max_requests" in short.stopped
    hopeless = SloSearch(5.0, 100.0, precision=0.05, max_requests=1000, per_level=100)
    while (rate := hopeless.next_rate()) is not None:
        hopeless.observe(rate, False, 100)
    assert hopeless.result is None and [r for r, _ in hopeless.path] == [100.0, 5.0]


def test_sweep_rates_and_the_knee() -> None:
    assert sweep_rates(4.0, 40.0, 4) == [4.0, 16.0, 28.0, 40.0]
    assert knee([4, 16, 28, 40], [4.0, 15.9, 27.0, 30.0]) == 2


def test_percentile_intervals_are_seeded_and_cover() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(1.0, 500)
    assert percentile_ci(values, 95) == percentile_ci(values, 95)  # reproducible
    true_p95 = -np.log(0.05)
    covered = sum(low <= true_p95 <= high for low, high in (
        percentile_ci(rng.exponential(1.0, 400), 95, resamples=300) for _ in range(40)))
    assert covered >= 34  # ~95 % of 40 intervals hold the true value
    big = rng.exponential(1.0, 50_000)  # the order-statistic interval above BOOTSTRAP_MAX
    low, high = percentile_ci(big, 99.9)
    assert low < np.percentile(big, 99.9) < high
    low, high = difference_ci(1.0, (0.9, 1.1), 1.3, (1.2, 1.4))
    assert low == pytest.approx(0.3 - 0.1 * 2 ** 0.5) and high == pytest.approx(0.3 + 0.1 * 2 ** 0.5)
    assert proportion_rise(0, 200, 30, 200) and not proportion_rise(0, 200, 1, 200)


def test_compare_judges_intervals_undefined_metrics_error_rates_and_refuses_wrong_signs() -> None:
    thresholds = parse_thresholds(["latency_p95:+10%"])
    base = {"c": {"latency_p95": 1.0, "latency_p95_ci_low": 0.95, "latency_p95_ci_high": 1.05,
                  "requests": 200, "successes": 200, "failures": 0, "error_rate": 0.0}}
    noisy = {"c": {**base["c"], "latency_p95": 1.15, "latency_p95_ci_low": 0.9,
                   "latency_p95_ci_high": 1.4}}
    assert not any(c.regressed for c in compare(noisy, base, thresholds)[0])  # within noise
    clear = {"c": {**base["c"], "latency_p95": 1.3, "latency_p95_ci_low": 1.27,
                   "latency_p95_ci_high": 1.33}}
    assert [c.metric for c in compare(clear, base, thresholds)[0] if c.regressed] == ["latency_p95"]
    failed = {"c": {"latency_p95": None, "requests": 200, "successes": 0, "failures": 200,
                    "error_rate": 1.0}}
    verdicts = {c.verdict for c in compare(failed, base, thresholds)[0] if c.regressed}
    assert verdicts == {"undefined", "error rate rose"}
    few = {"c": {"latency_p95": 2.0, "requests": 5}}
    (change,) = compare(few, {"c": {"latency_p95": 1.0, "requests": 5}}, thresholds)[0]
    assert change.verdict == "too few requests" and not change.regressed
    for wrong in ("latency_p95:-10%", "tpm:+10%", "requests:+1"):
        with pytest.raises(ConfigError) as error:
            parse_thresholds([wrong])
        assert "--fmbench-compare-fail" in error.value.render()


# -- a server of known capacity ------------------------------------------------------------

SLOTS, SERVICE_S = 8, 0.1


def _first_in_line(pid: int) -> None:
    """The server stands in for a machine of its own: on a busy CI host it gets the CPU
    first when it can (root may raise a priority; elsewhere it keeps the default)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -10)
    except OSError:
        pass


@pytest.fixture(scope="module")
def slotted_server() -> Iterator[str]:
    """K slots of S seconds in a process of its own, so the client never slows it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest_fmbench.testing.openai_server", "--slots", str(SLOTS),
         "--service-time", str(SERVICE_S)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env)
    _first_in_line(process.pid)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


def _levels_config(url: str, load: str, *, budgets: str = "", rates: str = "") -> str:
    return textwrap.dedent(f"""\
        general: {{name: levels}}
        datasets:
          synthetic: {{records: 30, seed: 3}}
          max_prompts_per_file: 3
          filters: [{{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}]
        inference_parameters: {{fast: {{max_new_tokens: 4}}}}
        load: {{request_timeout_s: 10, warmup_requests: 2, {load}}}
        budgets: {{{budgets}}}
        experiments:
          - name: slotted
            backend: openai
            deploy: no
            price_per_hour: 1.0
            openai: {{base_url: "{url}"}}
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_all.jsonl]
        """) + (f"    rates: {rates}\n" if rates else "")


def simulated_share(rate: float, requests: int, limit_s: float, service_s: float,
                    overhead_s: float, seed: int = 0) -> float:
    """The same queue as the server (K slots of ``service_s``, first come first served) fed
    the same arrivals as the rate pattern (same seed): share of requests answered within
    ``limit_s`` (each answer also takes ``overhead_s`` outside its slot: HTTP, parsing)."""
    arrivals = arrival_offsets(requests, rate, "poisson", seed=seed) / 1e9
    free = [0.0] * SLOTS
    within = 0
    for arrival in arrivals:
        start = max(arrival, heapq.heappop(free))
        heapq.heappush(free, start + service_s)
        within += start + service_s + overhead_s - arrival <= limit_s
    return within / requests


def true_sustainable_rate(requests: int, limit_s: float, share: float, service_s: float,
                          overhead_s: float) -> float:
    low, high = 1.0, SLOTS / service_s
    for _ in range(50):  # the share falls as the rate rises (same gaps, scaled)
        middle = (low + high) / 2
        meets = simulated_share(middle, requests, limit_s, service_s, overhead_s) >= share
        low, high = (middle, high) if meets else (low, middle)
    return low


def test_slo_search_finds_the_simulated_rate_and_the_probe_the_capacity(
        pytester: pytest.Pytester, slotted_server: str) -> None:
    requests = 200
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=_levels_config(
        slotted_server, f"requests: {requests}, slo_search: {{probe_concurrency: 32, "
        "probe_requests: 240, goodput_share: 0.95, precision: 0.04, max_requests: 3000}",
        budgets=f"latency_p95: {1.5 * SERVICE_S}"))
    result = pytester.runpytest_subprocess(*INNER, "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out", "-s")
    assert result.ret == 0, result.stdout.str()
    lines = rows(pytester.path / "out" / "levels.jsonl")
    (probe,) = [line for line in lines if line.get("kind") == "probe"]
    capacity = SLOTS / SERVICE_S
    print(f"probe {probe['throughput']:.1f}/s vs K/S {capacity:.1f}/s")
    assert abs(probe["throughput"] - capacity) <= 0.05 * capacity
    (search,) = [line for line in lines if line.get("record") == "search"]
    # The queue as this server realises it on this machine: each slot held K / (measured
    # capacity) seconds (S plus the server's own per-request work), and the latency outside
    # the slot measured at the search's light level (its requests never queue).
    service_s = SLOTS / probe["throughput"]
    light = min(search["path"], key=lambda step: step["rate"])["rate"]
    metrics = {row["level"]: row for row in json.loads(
        (pytester.path / "out" / "results.json").read_text())["metrics"]}
    overhead_s = max(0.0, metrics[f"slo-r{light:g}"]["latency_p50"] - service_s)
    true_rate = true_sustainable_rate(requests, 1.5 * SERVICE_S, 0.95, service_s, overhead_s)
    print(f"simulated with a slot of {service_s * 1000:.1f} ms, {overhead_s * 1000:.1f} ms outside")
    print(f"max sustainable rate {search['max_sustainable_rate']}/s vs simulated {true_rate:.1f}/s; "
          f"path {search['path']}")
    assert abs(search["max_sustainable_rate"] - true_rate) <= 0.10 * true_rate
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    (found,) = results["searches"]
    assert found["max_sustainable_rate"] == search["max_sustainable_rate"]
    assert found["cost_per_10k_txn"] > 0 and found["transactions_per_minute"] > 0
    assert "Max sustainable rate" in (pytester.path / "out" / "report.md").read_text()


def test_a_max_sustainable_rate_budget_fails_the_run_when_not_met(
        pytester: pytest.Pytester, slotted_server: str) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=_levels_config(
        slotted_server, "requests: 60, slo_search: {probe_requests: 100, precision: 0.2, "
        "max_requests: 400}",
        budgets=f"latency_p95: {1.5 * SERVICE_S}, max_sustainable_rate: {10 * SLOTS / SERVICE_S}"))
    result = pytester.runpytest_subprocess(*INNER, "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*max_sustainable_rate * < *slotted payload_all slo search*"])


def test_an_overloaded_rate_level_stops_early_marked_saturated(
        pytester: pytest.Pytester, slotted_server: str) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    overload = 3 * SLOTS / SERVICE_S
    pytester.makefile(".yml", cfg=_levels_config(slotted_server, "requests: 1500",
                                                 rates=f"[{overload:g}]"))
    result = pytester.runpytest_subprocess(*INNER, "--fmbench-config=cfg.yml",
                                           "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    (level,) = [line for line in rows(pytester.path / "out" / "levels.jsonl")]
    assert level["saturated"] and level["requests"] < 1500
    result.stdout.fnmatch_lines(["*SATURATED (stopped early: backlog kept growing*"])


# -- the same endpoint for every level ---------------------------------------------------------

def test_a_rate_sweep_of_4_levels_deploys_its_sagemaker_endpoint_once(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    with SageMakerControl() as control, AwsRuntimeEmulator(ttft_s=0.002, token_delay_s=0.0005) as runtime:
        for key, value in aws_environment(control_url=control.url, runtime_url=runtime.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FMBENCH_ROLE_ARN", ROLE)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        experiment = sagemaker_experiment("swept", concurrency="[]") + "    rates: [5, 10, 20, 40]\n"
        config = sagemaker_config(experiment).replace("request_timeout_s: 30", "request_timeout_s: 30, requests: 6")
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=config)
        result = pytester.runpytest_subprocess(*INNER, "--fmbench-config=cfg.yml",
                                               "--fmbench-results-dir=out", "-v")
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines(["*swept-payload_all-r5*", "*swept-payload_all-r40*"])
        assert [c.operation for c in control.calls].count("CreateEndpoint") == 1
        assert control.inventory() == {"endpoints": [], "configs": [], "models": []}
        events = rows(pytester.path / "out" / "endpoints.jsonl")
        assert [(e["event"], e["ok"]) for e in events] == [("deploy", True), ("teardown", True)]
        metrics = (pytester.path / "out" / "all_metrics.csv").read_text()
        assert all(f",r{rate}," in metrics for rate in (5, 10, 20, 40))


# -- the regression gate ----------------------------------------------------------------------

def test_the_same_server_twice_is_not_a_regression_and_20_percent_slower_is(
        pytester: pytest.Pytester) -> None:
    behaviour = ServerBehaviour(slots=SLOTS, service_time_s=0.04)
    with FakeOpenAIServer(behaviour, keep_bodies=False) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        pytester.makefile(".yml", cfg=_levels_config(server.url, "requests: 200, arrival: constant",
                                                     rates="[50]"))

        def run(out: str, *extra: str) -> pytest.RunResult:
            return pytester.runpytest_subprocess(*INNER, "--fmbench-config=cfg.yml",
                                                 f"--fmbench-results-dir={out}", *extra)

        assert run("first").ret == 0
        again = run("second", "--fmbench-compare=first", "--fmbench-compare-fail=latency_p95:+10%")
        assert again.ret == 0, again.stdout.str()
        again.stdout.fnmatch_lines(["*0 regression(s) in 1 common case(s)*"])
        behaviour.service_time_s = 0.048  # 20 % slower
        slower = run("third", "--fmbench-compare=first", "--fmbench-compare-fail=latency_p95:+10%")
        assert slower.ret == pytest.ExitCode.TESTS_FAILED, slower.stdout.str()
        slower.stdout.fnmatch_lines(["*REGRESSION latency_p95 *slotted-payload_all-r50*"])


def test_response_time_counts_the_wait_before_sending_and_rows_carry_p99_9_and_intervals() -> None:
    from pytest_fmbench.load.records import RequestRecord
    from pytest_fmbench.metrics import compute_metrics

    records = [RequestRecord("r", "e", "p.jsonl", 4, "e-p-r8", i, scheduled_ns=i * 10**8,
                             sent_ns=i * 10**8 + 5 * 10**8, last_byte_ns=i * 10**8 + 6 * 10**8,
                             level="r8", rate=8.0) for i in range(50)]
    (row,) = compute_metrics(records).to_dict("records")
    assert row["level"] == "r8" and row["offered_rate"] == 8.0
    assert row["latency_p95"] == pytest.approx(0.1) and row["response_time_p95"] == pytest.approx(0.6)
    assert row["latency_p99_9"] == pytest.approx(0.1)
    assert row["latency_p95_ci_low"] <= row["latency_p95"] <= row["latency_p95_ci_high"]
