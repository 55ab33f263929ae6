"""Open loop: arrivals at R requests/s, sent at precomputed absolute deadlines.

The schedule is computed before the first request: offsets from the case start, the first at
0, the gaps drawn from the arrival distribution (constant, Poisson = exponential gaps, gamma
with shape ``burstiness``) and then scaled so their mean is exactly 1/R. For Poisson that
makes the arrivals a Poisson process conditioned on its count (uniform order statistics),
and the asked rate is delivered over the case exactly, not only in expectation. Deadlines are
absolute, so a late send never delays the ones after it: the client cannot drift.

At most c requests are in flight (the case's concurrency level). An arrival that finds c in
flight waits in a queue for a slot, first come first served, and is sent as soon as one frees:
it is never dropped, its record has ``queued`` set, and its wait shows as ``sent - scheduled``
(``scheduled`` is always the arrival's deadline).

Bounds: ``load.requests`` arrivals and/or ``load.duration_s`` seconds of arrivals (R x
duration of them), whichever is fewer; the first R x ``load.warmup_s`` arrivals are warm-up
(sent, not recorded). Over several processes every process computes the same schedule and
sends every N-th arrival, so together they send the one schedule.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Sequence

import numpy as np

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.levels import SaturationWatch
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan, wait_until

ARRIVALS = ("constant", "poisson", "gamma")


def arrival_offsets(count: int, rate: float, arrival: str = "poisson", *, burstiness: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """``count`` arrival offsets in ns from the start: first at 0, mean gap exactly 1/rate."""
    if count < 1:
        return np.zeros(0, dtype=np.int64)
    if rate <= 0:
        raise ValueError("rate must be positive")
    gaps_count = count - 1
    rng = np.random.default_rng(seed)
    if arrival == "constant":
        gaps = np.ones(gaps_count)
    elif arrival == "poisson":
        gaps = rng.exponential(1.0, gaps_count)
    elif arrival == "gamma":
        if burstiness <= 0:
            raise ValueError("burstiness (the gamma shape) must be positive")
        gaps = rng.gamma(burstiness, 1.0 / burstiness, gaps_count)
    else:
        raise ValueError(f"unknown arrival '{arrival}' (known: {', '.join(ARRIVALS)})")
    if gaps_count:
        total = gaps.sum()
        gaps = gaps * (gaps_count / rate / total) if total > 0 else np.full(gaps_count, 1.0 / rate)
    offsets = np.concatenate(([0.0], np.cumsum(gaps))) * 1e9
    return offsets.round().astype(np.int64)


def schedule_size(plan: LoadPlan) -> tuple[int, int]:
    """(warm-up arrivals, recorded arrivals) of the whole case, over all processes."""
    assert plan.rate is not None
    warmup = math.floor(plan.rate * plan.warmup_s + 0.5)
    bounds = []
    if plan.requests is not None:
        bounds.append(plan.requests)
    if plan.duration_s is not None:
        bounds.append(max(1, math.floor(plan.rate * plan.duration_s + 1e-9)))
    if not bounds:
        raise ValueError("the rate pattern needs a bound: load.requests or load.duration_s")
    return warmup, min(bounds)


class RatePattern:
    name = "rate"

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None:
        if plan.rate is None:
            raise ValueError("the rate pattern needs load.rate")
        bound = plan.in_flight_bound
        if bound < 1 or not requests:
            return
        warmup, recorded = schedule_size(plan)
        offsets = arrival_offsets(warmup + recorded, plan.rate, plan.arrival,
                                  burstiness=plan.burstiness, seed=plan.seed).tolist()
        start = plan.start_ns if plan.start_ns is not None else now_ns() + 1_000_000
        loop = asyncio.get_running_loop()
        count = len(requests)
        send = dispatcher.send
        running: set[asyncio.Task[None]] = set()
        waiting: collections.deque[tuple[int, int, bool]] = collections.deque()
        idle = asyncio.Event()

        def launch(index: int, deadline: int, queued: bool) -> None:
            warm = index < warmup
            request_id = -1 - index if warm else index - warmup
            task = loop.create_task(send(request_id, requests[index % count], deadline,
                                         queued=queued, warmup=warm))
            running.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if waiting:
                index, deadline, _ = waiting.popleft()
                launch(index, deadline, True)
            elif not running:
                idle.set()

        watch = SaturationWatch(recorded // plan.processes) if plan.saturation_stop else None
        for index in range(plan.process_index, len(offsets), plan.processes):
            deadline = start + offsets[index]
            if deadline > now_ns():
                await wait_until(deadline)
            if watch is not None and index >= warmup and watch.observe(len(running) + len(waiting)):
                # No steady state: the rest of the schedule would only lengthen the queue.
                dispatcher.saturation = watch.reason
                break
            if len(running) >= bound:
                waiting.append((index, deadline, True))
            else:
                launch(index, deadline, False)
        while running or waiting:
            idle.clear()
            await idle.wait()
