"""Trace replay: open loop, each request sent at its own offset from the case start.

The offsets come with the requests (``InferenceRequest.offset_ns``, from a ``trace``
workload: the trace's timestamps divided by its ``speed``). Deadlines are absolute, so a late
send never delays the ones after it. The loop's timers wake up to a millisecond late (epoll
rounds its timeout up to whole milliseconds), so the pattern sleeps until ``SPIN_NS`` before a
deadline and then yields to the loop (``sleep(0)``, other requests' I/O still runs) until it
is due: sends land within tens of microseconds of their offsets on an idle machine
(benchmarks/perf/test_trace_replay.py).

As in the rate pattern, at most c requests (the case's concurrency level) are in flight; a
request due while c are in flight waits for a slot, first come first served, and its record
has ``queued`` set (its wait is ``sent - scheduled``). ``load.requests`` caps how many trace
entries are sent; over several processes each sends every N-th entry of the one schedule.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan

# How long before a deadline the pattern stops sleeping on a timer and yields instead.
SPIN_NS = 2_000_000
# Start this long after the pattern begins, so the first sends are not late by setup.
START_DELAY_NS = 5_000_000


async def wait_precisely(deadline_ns: int) -> None:
    """Until ``deadline_ns`` on the timeline: a timer for most of it, then loop turns."""
    delay = deadline_ns - now_ns() - SPIN_NS
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
    while now_ns() < deadline_ns:
        await asyncio.sleep(0)


class TracePattern:
    name = "trace"

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None:
        bound = plan.in_flight_bound
        count = len(requests) if plan.requests is None else min(plan.requests, len(requests))
        if bound < 1 or not count:
            return
        missing = [i for i in range(count) if requests[i].offset_ns is None]
        if missing:
            raise ValueError(f"the trace pattern needs timed requests (a 'trace' workload); "
                             f"request {missing[0]} has no offset")
        start = plan.start_ns if plan.start_ns is not None else now_ns() + START_DELAY_NS
        loop = asyncio.get_running_loop()
        send = dispatcher.send
        running: set[asyncio.Task[object]] = set()
        waiting: collections.deque[tuple[int, int]] = collections.deque()
        idle = asyncio.Event()

        def launch(index: int, deadline: int, queued: bool) -> None:
            task = loop.create_task(send(index, requests[index], deadline, queued=queued))
            running.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[object]) -> None:
            running.discard(task)
            if waiting:
                index, deadline = waiting.popleft()
                launch(index, deadline, True)
            elif not running:
                idle.set()

        # Sorted by offset (a trace file need not be), each process its every N-th entry.
        order = sorted(range(count), key=lambda i: requests[i].offset_ns or 0)
        for index in order[plan.process_index::plan.processes]:
            deadline = start + (requests[index].offset_ns or 0)
            await wait_precisely(deadline)
            if len(running) >= bound:
                waiting.append((index, deadline))
            else:
                launch(index, deadline, False)
        while running or waiting:
            idle.clear()
            await idle.wait()
