"""The load patterns (pytest_fmbench.load): deadlines, bounds, in-flight limits, excess, warm-up."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import LoadSettings
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.load.engine import LoadStats, RecordContext, plan_load, run_load
from pytest_fmbench.load.monitor import LoopLagMonitor
from pytest_fmbench.load.patterns import LoadPlan, get_pattern, pattern_names
from pytest_fmbench.load.rate import arrival_offsets, schedule_size
from pytest_fmbench.load.records import RequestRecord

MS = 1_000_000
REQUESTS = [InferenceRequest(f"prompt {i}", {}, prompt_tokens=10 + i) for i in range(7)]


class FakeClient:
    """Answers after ``delay_s``; counts what is in flight."""

    def __init__(self, delay_s: float = 0.0, block_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.block_s = block_s  # time.sleep inside invoke: a client hogging its loop
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent: list[int] = []
        self.closed = False

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        sent = now_ns()
        self.sent.append(sent)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.block_s:
                time.sleep(self.block_s)  # noqa: ASYNC251 - on purpose
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        return InferenceResult(sent_ns=sent, last_byte_ns=now_ns(), first_token_ns=now_ns(),
                               completion_tokens=4, token_source="server")

    async def aclose(self) -> None:
        self.closed = True


def drive(plan: LoadPlan, client: FakeClient, log: list[str] | None = None
          ) -> tuple[list[RequestRecord], LoadStats]:
    records: list[RequestRecord] = []
    context = RecordContext("run", "exp", "payload.jsonl", plan.concurrency, "exp-payload-c")
    stats = run_load(plan, lambda: client, REQUESTS, context, records.append,
                     log=None if log is None else log.append)
    return records, stats


# -- the schedule of the rate pattern -------------------------------------------------------

def test_constant_arrivals_are_evenly_spaced() -> None:
    offsets = arrival_offsets(5, rate=4.0, arrival="constant")
    assert offsets.tolist() == [0, 250 * MS, 500 * MS, 750 * MS, 1000 * MS]


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_random_arrivals_deliver_the_rate_exactly_and_repeat_by_seed(arrival: str) -> None:
    offsets = arrival_offsets(10_001, rate=250.0, arrival=arrival, seed=3)
    assert offsets[0] == 0
    assert np.all(np.diff(offsets) >= 0)
    assert offsets[-1] == pytest.approx(10_000 / 250.0 * 1e9, abs=1000)  # mean gap exactly 1/R
    assert np.array_equal(offsets, arrival_offsets(10_001, 250.0, arrival, seed=3))
    assert not np.array_equal(offsets, arrival_offsets(10_001, 250.0, arrival, seed=4))


def test_poisson_gaps_look_exponential_and_burstiness_shapes_gamma() -> None:
    def cv(arrival: str, burstiness: float = 1.0) -> float:
        gaps = np.diff(arrival_offsets(20_000, 100.0, arrival, burstiness=burstiness, seed=1))
        return float(gaps.std() / gaps.mean())

    assert cv("poisson") == pytest.approx(1.0, abs=0.05)
    assert cv("gamma", 0.25) == pytest.approx(2.0, abs=0.15)  # CV = 1/sqrt(shape)
    assert cv("gamma", 4.0) == pytest.approx(0.5, abs=0.05)
    assert cv("constant") == pytest.approx(0.0, abs=1e-9)


def test_schedule_size_bounds_and_warmup() -> None:
    plan = LoadPlan("rate", 8, rate=20.0, requests=100, duration_s=2.0, warmup_s=0.5)
    assert schedule_size(plan) == (10, 40)  # duration bound (20/s x 2 s) comes first
    assert schedule_size(LoadPlan("rate", 8, rate=20.0, requests=30)) == (0, 30)
    with pytest.raises(ValueError, match="bound"):
        schedule_size(LoadPlan("rate", 8, rate=20.0))


def test_unknown_arrival_and_pattern() -> None:
    with pytest.raises(ValueError, match="unknown arrival"):
        arrival_offsets(3, 1.0, "uniform")
    with pytest.raises(KeyError, match="known: concurrency, rate, sessions, trace, waves"):
        get_pattern("ramp")
    assert pattern_names() == ["concurrency", "rate", "sessions", "trace", "waves"]


# -- rate: sends at the deadlines, bounded in flight, excess queued and recorded -----------

def test_rate_sends_at_the_precomputed_deadlines() -> None:
    client = FakeClient(delay_s=0.005)
    plan = LoadPlan("rate", 16, rate=200.0, requests=60, arrival="poisson", seed=5)
    records, stats = drive(plan, client)
    assert len(records) == 60
    assert sorted(r.request_id for r in records) == list(range(60))
    records.sort(key=lambda r: r.request_id)
    scheduled = np.array([r.scheduled_ns for r in records])
    offsets = arrival_offsets(60, 200.0, "poisson", seed=5)
    assert np.array_equal(scheduled - scheduled[0], offsets)
    late_ms = np.array([(r.sent_ns - r.scheduled_ns) / MS for r in records])
    assert late_ms.min() >= 0
    assert np.median(late_ms) < 5
    assert not any(r.queued for r in records)
    assert stats.queued == 0 and client.closed


def test_rate_bounds_in_flight_and_records_the_excess() -> None:
    client = FakeClient(delay_s=0.05)
    # A wide saturation threshold: loop lag on a loaded CI machine must not mark what this
    # test checks (a queued arrival's wait for a slot is not the client being late).
    plan = LoadPlan("rate", 2, rate=200.0, requests=12, arrival="constant", saturation_ms=1000.0)
    log: list[str] = []
    records, stats = drive(plan, client, log)
    assert client.max_in_flight == 2
    assert len(records) == 12  # never dropped
    queued = [r for r in records if r.queued]
    assert len(queued) == stats.queued >= 8
    # A queued arrival keeps its deadline as `scheduled`: its wait shows as sent - scheduled.
    assert max(r.sent_ns - r.scheduled_ns for r in queued) > 100 * MS
    assert all(not r.saturated for r in queued)
    assert any("waited for a slot" in line and "200 requests/s" in line for line in log)


def test_rate_warmup_is_sent_but_not_recorded() -> None:
    client = FakeClient()
    plan = LoadPlan("rate", 8, rate=100.0, requests=10, warmup_s=0.1, arrival="constant")
    log: list[str] = []
    records, stats = drive(plan, client, log)
    assert len(client.sent) == 20 and len(records) == 10 and stats.warmup == 10
    assert sorted(r.request_id for r in records) == list(range(10))
    first = min(r.scheduled_ns for r in records)
    assert min(client.sent) < first - 50 * MS  # warm-up arrivals came first
    assert any("10 warm-up request(s)" in line for line in log)


def test_rate_duration_bound() -> None:
    plan = LoadPlan("rate", 8, rate=50.0, duration_s=0.2, arrival="constant")
    records, _ = drive(plan, FakeClient())
    assert len(records) == 10


# -- concurrency: c always in flight, bounds, warm-up ---------------------------------------

def test_concurrency_keeps_c_in_flight_until_the_count() -> None:
    client = FakeClient(delay_s=0.01)
    records, stats = drive(LoadPlan("concurrency", 3, requests=20), client)
    assert len(records) == 20 == stats.recorded
    assert client.max_in_flight == 3
    assert sorted(r.request_id for r in records) == list(range(20))
    # Closed loop: a request is due when its slot frees, so dispatch delay is tiny.
    assert max(r.sent_ns - r.scheduled_ns for r in records) < 10 * MS
    assert [r.prompt_tokens for r in sorted(records, key=lambda r: r.request_id)][:8] == [
        10, 11, 12, 13, 14, 15, 16, 10]  # payloads cycle


def test_concurrency_duration_bound_lets_in_flight_requests_finish() -> None:
    client = FakeClient(delay_s=0.03)
    started = time.monotonic()
    records, _ = drive(LoadPlan("concurrency", 4, duration_s=0.2), client)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.5
    assert 8 <= len(records) <= 40  # ~26 on an idle machine
    assert all(r.ok for r in records)
    last_start = max(r.scheduled_ns for r in records)
    assert max(r.last_byte_ns for r in records) > last_start  # finished, not cut off


def test_concurrency_warmup_excluded() -> None:
    client = FakeClient(delay_s=0.01)
    records, stats = drive(LoadPlan("concurrency", 2, requests=6, warmup_s=0.1), client)
    assert len(records) == 6 and stats.warmup >= 2
    assert len(client.sent) == 6 + stats.warmup
    assert sorted(r.request_id for r in records) == list(range(6))


def test_waves_through_the_engine_match_fmbench_waves() -> None:
    client = FakeClient(delay_s=0.005)
    records, _ = drive(LoadPlan("waves", 3, waves=4), client)
    assert sorted((r.wave, r.request_id) for r in records) == [
        (w, w * 3 + s) for w in range(4) for s in range(3)]
    for wave in range(4):
        scheduled = {r.scheduled_ns for r in records if r.wave == wave}
        assert len(scheduled) == 1  # one wave, one start


# -- the client's own overhead --------------------------------------------------------------

def test_a_client_hogging_its_loop_is_flagged_saturated() -> None:
    client = FakeClient(delay_s=0.001, block_s=0.03)  # each invoke blocks the loop 30 ms
    log: list[str] = []
    records, stats = drive(LoadPlan("rate", 8, rate=200.0, requests=10, arrival="constant",
                                    saturation_ms=10.0), client, log)
    assert stats.saturated >= 5
    assert sum(r.saturated for r in records) == stats.saturated
    assert max(r.loop_lag_us or 0 for r in records) >= 10_000
    assert any("WARNING client saturated" in line for line in log)


def test_a_healthy_run_is_not_saturated() -> None:
    log: list[str] = []
    # A generous threshold: this checks the bookkeeping, not the machine's scheduling.
    records, stats = drive(LoadPlan("concurrency", 2, requests=10, saturation_ms=500),
                           FakeClient(0.002), log)
    assert stats.saturated == 0 and not any(r.saturated for r in records)
    assert all(r.loop_lag_us is not None for r in records)
    assert log == []


def test_loop_lag_monitor_worst_since() -> None:
    monitor = LoopLagMonitor()
    for at, lag in [(10, 5), (20, 1), (30, 7), (40, 2), (50, 3)]:
        monitor.add(at, lag)
    assert monitor.worst_since(0) == 7
    assert monitor.worst_since(31) == 3
    assert monitor.worst_since(45) == 3
    assert monitor.worst_since(60) == 3  # no sample yet: the latest one
    assert monitor.max_lag_ns == 7


def test_client_exception_and_hang_end_as_records(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeClient):
        async def invoke(self, request: InferenceRequest) -> InferenceResult:
            if request.prompt.endswith("1"):
                raise RuntimeError("bug")
            if request.prompt.endswith("2"):
                await asyncio.sleep(30)
            return await super().invoke(request)

    monkeypatch.setattr("pytest_fmbench.load.patterns.HANG_GRACE_S", 0.0)
    records, _ = drive(LoadPlan("concurrency", 4, requests=4, timeout_s=0.2), Broken())
    errors = {r.request_id: r.error for r in records}
    assert errors == {0: "", 1: "client", 2: "timeout", 3: ""}


# -- settings -------------------------------------------------------------------------------

def test_plan_defaults_to_as_many_requests_as_waves() -> None:
    settings = LoadSettings(pattern="concurrency").merged(None)
    plan = plan_load(settings, concurrency=4, payload_count=30)
    assert plan.requests == 4 * 8 and plan.duration_s is None
    settings = LoadSettings(pattern="rate", rate=5, duration_s=10).merged(None)
    assert plan_load(settings, 4, 30).requests is None
    settings = LoadSettings(pattern="concurrency", processes=8, requests=10).merged(None)
    assert plan_load(settings, 3, 30).processes == 3  # no idle process


@pytest.mark.parametrize(("settings", "key"), [
    ({"pattern": "rate"}, "rate"),
    ({"pattern": "waves", "requests": 5}, "requests"),
    ({"pattern": "waves", "processes": 2}, "processes"),
    ({"pattern": "waves", "warmup_s": 1}, "warmup_s"),
])
def test_settings_problems(settings: dict[str, object], key: str) -> None:
    problems = LoadSettings(**settings).merged(None).problems()  # type: ignore[arg-type]
    assert [k for k, _ in problems] == [key]


# -- several processes ------------------------------------------------------------------------

def test_processes_spread_one_case_and_merge() -> None:
    from pytest_fmbench.endpoints.openai_http import OpenAIClient
    from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour

    with FakeOpenAIServer(ServerBehaviour(completion_tokens=3), keep_bodies=False) as server:
        records: list[RequestRecord] = []
        context = RecordContext("run", "exp", "p", 4, "case", worker="gw1")
        plan = LoadPlan("rate", 4, rate=100.0, requests=40, arrival="constant", processes=2)
        stats = run_load(plan, lambda: OpenAIClient(server.url, timeout_s=10), REQUESTS,
                         context, records.append)
        assert server.stats.requests == 40
    assert len(records) == stats.recorded == 40
    assert sorted(r.request_id for r in records) == list(range(40))
    assert all(r.ok and r.worker == "gw1" for r in records)
    # One schedule on one timeline: the two processes' deadlines interleave 10 ms apart.
    scheduled = sorted(r.scheduled_ns for r in records)
    assert np.allclose(np.diff(scheduled), 10 * MS, atol=1000)
    assert max(r.sent_ns - r.scheduled_ns for r in records) < 200 * MS


def test_processes_need_a_picklable_client() -> None:
    from pytest_fmbench.errors import EndpointError

    class Local(FakeClient):  # defined in a function: cannot be pickled
        pass

    with pytest.raises(EndpointError, match="cannot be pickled"):
        drive(LoadPlan("concurrency", 2, requests=2, processes=2), Local())


def test_a_load_section_that_cannot_run_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pytest_fmbench.config.loader import load_config
    from pytest_fmbench.errors import ConfigError

    path = tmp_path / "cfg.yml"
    path.write_text(
        "datasets: {filters: [{payload_file: a.jsonl}]}\n"
        "load: {pattern: rate, requests: 10}\n"
        "experiments:\n"
        "  - {name: x, backend: openai, openai: {base_url: 'http://h:1'},\n"
        "     payload_files: [a.jsonl], concurrency_levels: [1]}\n"
        "  - {name: y, backend: openai, openai: {base_url: 'http://h:1'}, load: {rate: 5},\n"
        "     payload_files: [a.jsonl], concurrency_levels: [1]}\n")
    with pytest.raises(ConfigError, match=r"experiments\[0\] \(x\)\.load\.rate: the rate pattern needs"):
        load_config(path)
