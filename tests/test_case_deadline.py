"""A hung case ends at its deadline, ``load.max_case_s``, with its records kept (REVIEW L4)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import LoadSettings
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.errors import EndpointError
from pytest_fmbench.load import processes
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord

CONTEXT = RecordContext("run", "exp", "p.jsonl", 2, "exp-p-c2")


class HangingClient:
    """Answers its first ``answered`` requests at once, then never answers (a hung server)."""

    def __init__(self, answered: int = 2, blocking: bool = False) -> None:
        self.answered = answered
        self.blocking = blocking
        self.calls = 0

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        self.calls += 1
        sent = now_ns()
        if self.calls > self.answered:
            if self.blocking:
                time.sleep(3600)  # noqa: ASYNC251 - a child whose event loop is stuck
            await asyncio.sleep(3600)
        return InferenceResult(sent_ns=sent, last_byte_ns=now_ns(), completion_tokens=1)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("pattern", ["waves", "concurrency", "rate"])
def test_a_hung_case_stops_at_max_case_s_and_keeps_its_records(pattern: str) -> None:
    plan = LoadPlan(pattern=pattern, concurrency=2, requests=None if pattern == "waves" else 4,
                    waves=2, rate=50.0 if pattern == "rate" else None, timeout_s=600.0,
                    max_case_s=0.5)
    records: list[RequestRecord] = []
    lines: list[str] = []
    started = time.monotonic()
    stats = run_load(plan, HangingClient, [InferenceRequest("p")] * 4, CONTEXT, records.append,
                     log=lines.append)
    assert time.monotonic() - started < 5
    assert sum(r.ok for r in records) == 2
    cut = [r for r in records if not r.ok]
    assert len(cut) == 2 and {r.error for r in cut} == {"timeout"}
    assert "load.max_case_s = 0.5 s" in cut[0].error_detail
    assert stats.deadline_hit and stats.cut_off == 2
    assert any("reached its deadline" in line for line in lines)


def test_max_case_s_is_a_load_setting() -> None:
    from pytest_fmbench.load.engine import plan_load

    settings = LoadSettings(max_case_s=30, min_iters_per_combination=1, max_iters_per_combination=1)
    assert plan_load(settings, 1, 1).max_case_s == 30
    with pytest.raises(ValueError):
        LoadSettings(max_case_s=0)


def test_load_processes_children_stop_at_the_deadline_and_send_their_records() -> None:
    plan = LoadPlan(pattern="concurrency", concurrency=2, requests=4, timeout_s=600.0,
                    processes=2, max_case_s=1.0)
    records: list[RequestRecord] = []
    started = time.monotonic()
    stats = run_load(plan, lambda: HangingClient(answered=1), [InferenceRequest("p")] * 4, CONTEXT,
                     records.append)
    assert time.monotonic() - started < 30
    assert stats.deadline_hit and stats.cut_off == 2
    assert sum(r.ok for r in records) == 2 and len(records) == 4


def test_a_stuck_load_process_is_killed_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "DEADLINE_GRACE_S", 0.5)
    plan = LoadPlan(pattern="concurrency", concurrency=1, requests=2, timeout_s=600.0,
                    processes=2, max_case_s=1.0)
    started = time.monotonic()
    with pytest.raises(EndpointError, match="did not finish by the case deadline"):
        run_load(plan, lambda: HangingClient(answered=0, blocking=True), [InferenceRequest("p")] * 2,
                 CONTEXT, lambda record: None)
    assert time.monotonic() - started < 30
