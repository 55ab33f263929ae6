"""Multi-turn sessions: each conversation sends its turns one after another, with history.

The requests are the first turns of a ``sessions`` workload; each carries its later user
turns (``followups``). A turn is sent with the whole conversation so far as chat messages:
every earlier user turn followed by the answer the endpoint actually gave to it (the
response text; empty when a backend keeps none, or when the turn failed). Up to c sessions
(the case's concurrency level) run at once; a session's next turn is due when its previous
answer is complete plus the workload's think time (``scheduled``), so ``sent - scheduled``
stays the client's own delay. Records carry ``session`` and ``turn`` for the per-turn and
per-session figures (``load/workload_summary.py``).

``load.requests`` caps the sessions run; over several processes each runs every N-th
session. Request ids: process k numbers its requests k, k+N, k+2N, ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan, wait_until


def next_turn(request: InferenceRequest, answer: str) -> InferenceRequest | None:
    """The session's next request: history, this answer, the next user turn (None: done)."""
    if not request.followups:
        return None
    user = request.followups[0]
    history = request.messages or ({"role": "user", "content": request.prompt},)
    messages = (*history, {"role": "assistant", "content": answer},
                {"role": "user", "content": user})
    return dataclasses.replace(request, prompt=user, messages=messages, prompt_tokens=None,
                               turn=request.turn + 1, followups=request.followups[1:],
                               target_prompt_tokens=None)


class SessionsPattern:
    name = "sessions"

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None:
        workers = plan.in_flight_bound
        count = len(requests) if plan.requests is None else min(plan.requests, len(requests))
        if workers < 1 or not count:
            return
        start = plan.start_ns if plan.start_ns is not None else now_ns()
        await wait_until(start)
        sessions = iter(range(plan.process_index, count, plan.processes))
        ids = itertools.count(plan.process_index, plan.processes)
        think_ns = int(plan.think_time_s * 1e9)
        send = dispatcher.send_for_result

        async def worker() -> None:
            for index in sessions:  # one shared iterator: each session is run once
                request: InferenceRequest | None = requests[index]
                due = now_ns()
                while request is not None:
                    result = await send(next(ids), request, due)
                    if result is None:  # the case deadline: nothing more starts
                        return
                    request = next_turn(request, result.text if not result.error else "")
                    due = now_ns() + think_ns
                    if think_ns:
                        await wait_until(due)

        await asyncio.gather(*(worker() for _ in range(workers)))
