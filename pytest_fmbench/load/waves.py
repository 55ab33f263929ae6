"""FMBench's load pattern: waves of ``c`` concurrent requests.

For concurrency c, the payloads are taken c at a time (wrapping around to fill), and each
wave is fired at once; the next wave starts when the slowest request of this one returns.
The number of waves is ``ceil(len(payloads) / c)`` bounded by FMBench's
``min_iters_per_combination`` and ``max_iters_per_combination``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest, InferenceResult
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan

# Extra time a client gets beyond its own timeout before the wave gives up on it.
HANG_GRACE_S = 5.0

# (request id, wave, scheduled ns, request, result): called as each request completes.
OnResult = Callable[[int, int, int, InferenceRequest, InferenceResult], None]


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


async def run_waves(
    client: EndpointClient,
    requests: Sequence[InferenceRequest],
    plan: WavePlan,
    on_result: OnResult,
    *,
    timeout_s: float,
) -> None:
    """Fire the planned waves; every request ends in ``on_result``, success or not."""
    request_id = 0
    for wave in range(plan.waves):
        batch = wave_requests(requests, plan, wave)
        scheduled = now_ns()
        calls = [
            _one(client, request, request_id + slot, wave, scheduled, on_result, timeout_s)
            for slot, request in enumerate(batch)
        ]
        request_id += len(batch)
        await asyncio.gather(*calls)


async def _one(
    client: EndpointClient,
    request: InferenceRequest,
    request_id: int,
    wave: int,
    scheduled: int,
    on_result: OnResult,
    timeout_s: float,
) -> None:
    sent = now_ns()
    try:
        # The client enforces the timeout itself; this bound only catches a client that hangs.
        result = await asyncio.wait_for(client.invoke(request), timeout_s + HANG_GRACE_S)
    except TimeoutError:
        result = InferenceResult(sent_ns=sent, last_byte_ns=now_ns(), error="timeout",
                                 error_detail=f"no response within {timeout_s} s")
    except Exception as exc:  # noqa: BLE001 - a client bug must not stop the run
        result = InferenceResult(sent_ns=sent, last_byte_ns=now_ns(), error="client",
                                 error_detail=f"{type(exc).__name__}: {exc}"[:500])
    on_result(request_id, wave, scheduled, request, result)


class WavesPattern:
    """``run_waves`` as a load pattern (``load/patterns.py``): same waves, same records."""

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
