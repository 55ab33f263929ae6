"""Closed loop: c requests always in flight.

c workers each send a request, wait for it, and send the next at once, until the count bound
(``load.requests``) or the time bound (``load.duration_s``) is reached; requests already in
flight then finish and are recorded. A request is due (``scheduled``) the moment its worker's
slot frees, so ``sent - scheduled`` is the client's own dispatch delay.

Requests started during the first ``load.warmup_s`` seconds are warm-up: sent, but neither
recorded nor counted. Over several processes each runs its share of the c workers and of the
count, with request ids dealt round-robin (process k sends ids k, k+N, k+2N, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan, wait_until


class ConcurrencyPattern:
    name = "concurrency"

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None:
        workers = plan.in_flight_bound
        if workers < 1 or not requests:
            return
        start = plan.start_ns if plan.start_ns is not None else now_ns()
        await wait_until(start)
        warmup_end = start + int(plan.warmup_s * 1e9)
        end = warmup_end + int(plan.duration_s * 1e9) if plan.duration_s else None
        limit = plan.share(plan.requests) if plan.requests is not None else None
        count = len(requests)
        step, first = plan.processes, plan.process_index
        sent = 0
        warm = 0

        async def worker() -> None:
            nonlocal sent, warm
            send = dispatcher.send
            while True:
                now = now_ns()
                if end is not None and now >= end:
                    return
                if now < warmup_end:
                    warm += 1
                    await send(-warm, requests[(first + warm * step) % count], now, warmup=True)
                    continue
                if limit is not None and sent >= limit:
                    return
                request_id = first + sent * step
                sent += 1
                await send(request_id, requests[request_id % count], now)

        await asyncio.gather(*(worker() for _ in range(workers)))
