"""Load patterns: one module per pattern behind one small interface, and what they share.

A pattern decides *when* each request is due (``scheduled``) and calls the ``Dispatcher``,
which sends it, times the client's own overhead, and hands the outcome to a sink:

- ``waves`` (``load/waves.py``): FMBench's waves of c requests;
- ``concurrency`` (``load/concurrency.py``): closed loop, c requests always in flight;
- ``rate`` (``load/rate.py``): open loop, arrivals at precomputed absolute deadlines;
- ``trace`` (``load/trace.py``): open loop, each request at its own offset (trace replay);
- ``sessions`` (``load/sessions.py``): multi-turn conversations, turn after turn.

In every pattern the case's concurrency level c is the most requests in flight at once.
Everything a pattern needs besides the client is in a picklable ``LoadPlan``, so the same
pattern runs in one process or in several (``load.processes``, ``load/processes.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import (
    EndpointClient,
    EnforcesTimeout,
    InferenceRequest,
    InferenceResult,
)
from pytest_fmbench.load.monitor import LoopLagMonitor

if TYPE_CHECKING:
    from pytest_fmbench.config.model import RaySettings

# Extra time a client gets beyond its own timeout before the dispatcher gives up on it.
HANG_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """What one case's load looks like; picklable, shared by every process of the case."""

    pattern: str
    concurrency: int  # the most requests in flight at once (waves: the wave size)
    requests: int | None = None  # count bound on recorded requests
    duration_s: float | None = None  # time bound, after warm-up
    waves: int = 0  # waves only
    rate: float | None = None  # rate only: requests per second
    arrival: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    warmup_s: float = 0.0
    timeout_s: float = 120.0
    saturation_ms: float = 10.0
    max_case_s: float | None = None  # the case's deadline (load.max_case_s); None: none
    processes: int = 1
    process_index: int = 0
    start_ns: int | None = None  # the shared start on the timeline; None: at once
    # load.processes: auto: the count is chosen by a probe before the case (load/autoscale.py).
    auto_processes: bool = False
    # "local" (this host: in-process or load.processes) or "ray" (Ray actors, ``ray``).
    executor: str = "local"
    ray: RaySettings | None = None
    think_time_s: float = 0.0  # sessions only: pause between a session's turns
    # rate only: stop sending once the backlog keeps growing (load/levels.SaturationWatch).
    saturation_stop: bool = False

    def for_process(self, index: int, start_ns: int) -> LoadPlan:
        return dataclasses.replace(self, process_index=index, start_ns=start_ns)

    def share(self, total: int) -> int:
        """This process's part of ``total`` when dealt round-robin over the processes."""
        return max(0, -(-(total - self.process_index) // self.processes))

    @property
    def in_flight_bound(self) -> int:
        return self.share(self.concurrency)


@dataclasses.dataclass(slots=True)
class Completed:
    """One finished request, as the dispatcher saw it."""

    request_id: int
    wave: int
    scheduled_ns: int
    request: InferenceRequest
    result: InferenceResult
    queued: bool
    warmup: bool
    loop_lag_us: int
    saturated: bool


Sink = Callable[[Completed], None]


class Dispatcher:
    """Sends one request, bounds it in time, and reports it with the client's overhead."""

    def __init__(self, client: EndpointClient, sink: Sink, plan: LoadPlan,
                 monitor: LoopLagMonitor) -> None:
        self.client = client
        self.sink = sink
        self.plan = plan
        self.monitor = monitor
        self.guard_s = plan.timeout_s + HANG_GRACE_S
        # A client that bounds each request by itself (``EnforcesTimeout``) needs no second
        # timer per request from here.
        self.guarded = not (isinstance(client, EnforcesTimeout) and client.enforces_timeout)
        self.saturation_ns = int(plan.saturation_ms * 1e6)
        self.in_flight = 0
        # Set at the case deadline: requests in flight end as cut-off records, none start.
        self.cut_off = False
        # Why a pattern stopped sending early because the endpoint could not keep up ("": no).
        self.saturation = ""
        self._tasks: set[asyncio.Task[object]] = set()

    async def send(self, request_id: int, request: InferenceRequest, scheduled_ns: int, *,
                   wave: int = -1, queued: bool = False, warmup: bool = False) -> None:
        """Every request ends in the sink, success or not; only cancellation escapes
        (and a request cut off at the case deadline still ends in the sink)."""
        await self.send_for_result(request_id, request, scheduled_ns, wave=wave, queued=queued,
                                   warmup=warmup)

    async def send_for_result(self, request_id: int, request: InferenceRequest,
                              scheduled_ns: int, *, wave: int = -1, queued: bool = False,
                              warmup: bool = False) -> InferenceResult | None:
        """``send``, returning the result too (the sessions pattern builds the next turn
        from it); None when nothing was sent (the case deadline passed)."""
        if self.cut_off:
            return None
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.in_flight += 1
        started = now_ns()
        try:
            if self.guarded:
                # The client should enforce the timeout; this bound catches one that hangs.
                async with asyncio.timeout(self.guard_s):
                    result = await self.client.invoke(request)
            else:
                result = await self.client.invoke(request)
        except TimeoutError:
            result = _failed(started, "timeout", f"no response within {self.plan.timeout_s} s")
        except Exception as exc:  # noqa: BLE001 - a client bug must not stop the run
            result = _failed(started, "client", f"{type(exc).__name__}: {exc}"[:500])
        except asyncio.CancelledError:
            if not self.cut_off:
                raise
            result = _failed(started, "timeout", "cut off at the case deadline "
                             f"(load.max_case_s = {self.plan.max_case_s:g} s)")
        finally:
            self.in_flight -= 1
            if task is not None:
                self._tasks.discard(task)
        # Saturation is the client's own lateness: from the first send (a retried request's
        # back-off is the server throttling, not the client) and the loop lag since then.
        first_sent = result.sent_ns - result.retry_wait_ns
        lag = self.monitor.worst_since(first_sent)
        late = not queued and first_sent - scheduled_ns > self.saturation_ns
        self.sink(Completed(request_id, wave, scheduled_ns, request, result, queued, warmup,
                            lag // 1000, late or lag > self.saturation_ns))
        return result


    async def cut_off_in_flight(self) -> int:
        """The case deadline: no new request starts, those in flight end as ``timeout``
        records; returns how many were cut off."""
        self.cut_off = True
        cut = 0
        while self._tasks:
            tasks = list(self._tasks)
            cut += len(tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return cut


def _failed(sent_ns: int, error: str, detail: str) -> InferenceResult:
    return InferenceResult(sent_ns=sent_ns, last_byte_ns=now_ns(), error=error, error_detail=detail)


async def wait_until(deadline_ns: int) -> None:
    """Sleep until ``deadline_ns`` on the timeline (loop timers are ~1 ms coarse: re-check)."""
    while (delay := deadline_ns - now_ns()) > 0:
        await asyncio.sleep(delay / 1e9)


class LoadPattern(Protocol):
    """Fires one case's requests through the dispatcher; returns when all have ended."""

    name: str

    async def run(self, plan: LoadPlan, requests: Sequence[InferenceRequest],
                  dispatcher: Dispatcher) -> None: ...


_PATTERNS: dict[str, str] = {
    "waves": "pytest_fmbench.load.waves:WavesPattern",
    "concurrency": "pytest_fmbench.load.concurrency:ConcurrencyPattern",
    "rate": "pytest_fmbench.load.rate:RatePattern",
    "trace": "pytest_fmbench.load.trace:TracePattern",
    "sessions": "pytest_fmbench.load.sessions:SessionsPattern",
}


def register_pattern(name: str, target: str) -> None:
    """Add a pattern (``module:Class``); its class is created with no arguments."""
    _PATTERNS[name] = target


def pattern_names() -> list[str]:
    return sorted(_PATTERNS)


def get_pattern(name: str) -> LoadPattern:
    try:
        target = _PATTERNS[name]
    except KeyError:
        raise KeyError(f"unknown load pattern '{name}' (known: {', '.join(pattern_names())})") from None
    module, _, attr = target.partition(":")
    pattern: LoadPattern = getattr(importlib.import_module(module), attr)()
    return pattern
