"""FMBench's load pattern: waves of ``c`` concurrent requests.

For concurrency c, the payloads are taken c at a time (wrapping around to fill), and each
wave is fired at once; the next wave starts when the slowest request of this one returns.
The number of waves is ``ceil(len(payloads) / c)`` bounded by FMBench's
``min_iters_per_combination`` and ``max_iters_per_combination``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan


@dataclass(frozen=True)
class WavePlan:
    concurrency: int
    waves: int

    @property
    def requests(self) -> int:
        return self.concurrency * self.waves


def plan_waves(payload_count: int, concurrency: int, min_waves: int, max_waves: int) -> WavePlan:
    if payload_count < 1:
        raise ValueError("no payloads to send")
    natural = math.ceil(payload_count / concurrency)
    return WavePlan(concurrency, max(min_waves, min(max_waves, natural)))


def wave_requests(requests: Sequence[InferenceRequest], plan: WavePlan, wave: int) -> list[InferenceRequest]:
    start = wave * plan.concurrency
    return [requests[(start + slot) % len(requests)] for slot in range(plan.concurrency)]


class WavesPattern:
    """FMBench's waves as a load pattern (``load/patterns.py``)."""

    name = "waves"

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None:
        waves = WavePlan(plan.concurrency, plan.waves)
        request_id = 0
        send = dispatcher.send
        for wave in range(waves.waves):
            batch = wave_requests(requests, waves, wave)
            scheduled = now_ns()
            await asyncio.gather(*(send(request_id + slot, request, scheduled, wave=wave)
                                   for slot, request in enumerate(batch)))
            request_id += len(batch)
