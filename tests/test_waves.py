"""Unit tests of pytest_fmbench.load.waves: FMBench's wave pattern."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest, InferenceResult
from pytest_fmbench.load import patterns
from pytest_fmbench.load.monitor import LoopLagMonitor
from pytest_fmbench.load.patterns import Completed, Dispatcher, LoadPlan
from pytest_fmbench.load.waves import WavePlan, WavesPattern, plan_waves, wave_requests
from pytest_fmbench.run import run_async

MS = 1_000_000


@dataclass
class Seen:
    request_id: int
    wave: int
    scheduled: int
    request: InferenceRequest
    result: InferenceResult


@dataclass
class FakeClient:
    """Sleeps ``parameters['delay']`` seconds; raises or hangs when the prompt says so."""

    in_flight: int = 0
    max_in_flight: int = 0
    calls: list[str] = field(default_factory=list)

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        sent = now_ns()
        self.calls.append(request.prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.prompt == "boom":
                raise RuntimeError("client bug")
            if request.prompt == "hang":
                await asyncio.sleep(3600)
            await asyncio.sleep(request.parameters.get("delay", 0.0))
            return InferenceResult(sent_ns=sent, last_byte_ns=now_ns(), first_token_ns=sent,
                                   completion_tokens=1, token_source="server")
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        pass


def req(prompt: str, delay: float = 0.0) -> InferenceRequest:
    return InferenceRequest(prompt, {"delay": delay})


def drive(client: FakeClient, requests: list[InferenceRequest], plan: WavePlan,
          timeout_s: float = 10.0) -> list[Seen]:
    """The waves pattern as the engine runs it: through the dispatcher."""
    seen: list[Seen] = []

    def sink(done: Completed) -> None:
        seen.append(Seen(done.request_id, done.wave, done.scheduled_ns, done.request, done.result))

    async def go() -> None:
        monitor = LoopLagMonitor()
        monitor.start()
        load = LoadPlan("waves", plan.concurrency, waves=plan.waves, timeout_s=timeout_s)
        try:
            await WavesPattern().run(load, requests, Dispatcher(client, sink, load, monitor))
        finally:
            await monitor.stop()

    run_async(go)
    return seen


# --- planning -----------------------------------------------------------------------------

@pytest.mark.parametrize(("payloads", "concurrency", "low", "high", "waves"), [
    (10, 2, 5, 105, 5),     # natural: ceil(10 / 2)
    (11, 2, 5, 105, 6),     # ceil rounds up
    (7, 2, 1, 100, 4),
    (3, 1, 5, 105, 5),      # raised to the minimum
    (1000, 1, 5, 105, 105),  # capped at the maximum
    (1, 8, 5, 105, 5),
    (50, 4, 1, 1, 1),
])
def test_plan_waves_bounds(payloads: int, concurrency: int, low: int, high: int,
                           waves: int) -> None:
    plan = plan_waves(payloads, concurrency, low, high)
    assert plan == WavePlan(concurrency, waves)
    assert plan.requests == concurrency * waves


def test_plan_waves_needs_payloads() -> None:
    with pytest.raises(ValueError, match="no payloads"):
        plan_waves(0, 1, 5, 105)


def test_wave_requests_wrap_around() -> None:
    requests = [req("a"), req("b"), req("c")]
    plan = WavePlan(concurrency=2, waves=4)
    prompts = [[r.prompt for r in wave_requests(requests, plan, w)] for w in range(4)]
    assert prompts == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]


def test_wave_wider_than_payloads_repeats() -> None:
    plan = WavePlan(concurrency=5, waves=1)
    assert [r.prompt for r in wave_requests([req("a"), req("b")], plan, 0)] == list("ababa")


# --- running ------------------------------------------------------------------------------

def test_waves_send_every_planned_request_in_waves() -> None:
    client = FakeClient()
    requests = [req(f"p{i}") for i in range(5)]
    plan = WavePlan(concurrency=3, waves=3)
    seen = drive(client, requests, plan)

    assert sorted(s.request_id for s in seen) == list(range(9))
    by_id = {s.request_id: s for s in seen}
    assert [by_id[i].wave for i in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [by_id[i].request.prompt for i in range(9)] == [f"p{i % 5}" for i in range(9)]
    assert client.max_in_flight == 3
    for s in seen:
        assert not s.result.error
        assert s.scheduled <= s.result.sent_ns <= s.result.last_byte_ns
    # One scheduled time per wave.
    for wave in range(3):
        assert len({s.scheduled for s in seen if s.wave == wave}) == 1


def test_next_wave_waits_for_the_slowest_request() -> None:
    client = FakeClient()
    # Wave 0: one fast, one slow (0.2 s); wave 1: two fast.
    requests = [req("fast", 0.0), req("slow", 0.2), req("f2", 0.0), req("f3", 0.0)]
    seen = drive(client, requests, WavePlan(concurrency=2, waves=2))

    wave0 = [s for s in seen if s.wave == 0]
    wave1 = [s for s in seen if s.wave == 1]
    slowest_end = max(s.result.last_byte_ns for s in wave0)
    fast_end = min(s.result.last_byte_ns for s in wave0)
    assert slowest_end - fast_end >= 150 * MS
    for s in wave1:
        assert s.scheduled >= slowest_end
        assert s.result.sent_ns >= slowest_end
    # Results arrive as each completes: the fast one of wave 0 is reported first.
    assert seen[0].request.prompt == "fast"
    assert client.max_in_flight == 2


def test_client_exception_is_a_client_error_and_the_run_goes_on() -> None:
    client = FakeClient()
    requests = [req("ok"), req("boom"), req("ok2")]
    seen = drive(client, requests, WavePlan(concurrency=2, waves=3))

    assert len(seen) == 6
    errors = [s for s in seen if s.result.error]
    assert [s.request.prompt for s in errors] == ["boom", "boom"]
    for s in errors:
        assert s.result.error == "client"
        assert "RuntimeError: client bug" in s.result.error_detail
        assert s.result.sent_ns <= s.result.last_byte_ns
    assert {s.wave for s in seen} == {0, 1, 2}
    assert sum(1 for s in seen if not s.result.error) == 4


def test_hanging_client_ends_as_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client is meant to enforce timeout_s itself; the dispatcher only adds a grace bound
    # (timeout_s + HANG_GRACE_S) for a client that hangs.
    monkeypatch.setattr(patterns, "HANG_GRACE_S", 0.2)
    client = FakeClient()
    seen = drive(client, [req("hang"), req("ok")], WavePlan(concurrency=2, waves=1),
                 timeout_s=0.05)
    by_prompt = {s.request.prompt: s for s in seen}
    assert by_prompt["ok"].result.error == ""
    hang = by_prompt["hang"].result
    assert hang.error == "timeout"
    assert "0.05" in hang.error_detail
    # asyncio may fire a timer up to its clock resolution (1 ms) early.
    assert hang.last_byte_ns - hang.sent_ns >= 245 * MS
    assert client.in_flight == 0  # the hung call was cancelled


def test_fake_client_satisfies_the_protocol() -> None:
    assert isinstance(FakeClient(), EndpointClient)
