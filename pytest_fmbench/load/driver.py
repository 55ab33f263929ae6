"""Running one load plan on an event loop, and what every process of a case shares.

``drive`` runs a plan's pattern on the running loop and feeds each completed request to a
``Collector``, which turns it into a ``RequestRecord`` (through the case's ``RecordContext``)
and sums the client's own overhead into ``LoadStats``. Both the in-process path (``engine``)
and the child processes of ``load.processes`` (``processes``) use it, so neither imports
the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from pytest_fmbench.clock import anchor
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest
from pytest_fmbench.load.monitor import LoopLagMonitor
from pytest_fmbench.load.patterns import Completed, Dispatcher, LoadPlan, get_pattern
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.redaction import scrub

T = TypeVar("T")
# This process's clock anchor (wall ns), stamped on each of its records.
_ANCHOR_WALL_NS = anchor()[0]
Emit = Callable[[RequestRecord], None]


@dataclasses.dataclass(frozen=True)
class RecordContext:
    """What every record of one case shares; picklable, so other processes build records too."""

    run_id: str
    experiment: str
    payload_file: str
    concurrency: int
    case_id: str
    worker: str = ""
    shard: str = ""
    host: str = ""
    # Another host's process (``load.executor: ray``): its clock minus the driver's, and
    # the estimate's uncertainty; its timestamps are moved onto the driver's timeline.
    clock_offset_ns: int = 0
    clock_uncertainty_ns: int = 0
    # The load level (records.RequestRecord.level / rate / repeat).
    level: str = ""
    rate: float | None = None
    repeat: int = 0

    def record(self, done: Completed) -> RequestRecord:
        result, request = done.result, done.request
        prompt_tokens = result.prompt_tokens if result.prompt_tokens is not None else request.prompt_tokens
        return RequestRecord(
            run_id=self.run_id, experiment=self.experiment, payload_file=self.payload_file,
            concurrency=self.concurrency, case_id=self.case_id, request_id=done.request_id,
            scheduled_ns=done.scheduled_ns, sent_ns=result.sent_ns,
            last_byte_ns=result.last_byte_ns, first_token_ns=result.first_token_ns,
            first_reasoning_ns=result.first_reasoning_ns, prompt_tokens=prompt_tokens,
            completion_tokens=result.completion_tokens, token_source=result.token_source,
            error=result.error, status=result.status,
            # An error body or message may echo a header or URL: scrubbed (errors only).
            error_detail=scrub(result.error_detail) if result.error_detail else "",
            wave=done.wave, retries=result.retries, retry_wait_ns=result.retry_wait_ns,
            worker=self.worker, itl_us=result.itl_us,
            queued=done.queued, loop_lag_us=done.loop_lag_us, saturated=done.saturated,
            shard=self.shard, host=self.host, clock_anchor_ns=_ANCHOR_WALL_NS,
            clock_offset_ns=self.clock_offset_ns, clock_uncertainty_ns=self.clock_uncertainty_ns,
            session=request.session, turn=request.turn,
            target_prompt_tokens=request.target_prompt_tokens,
            target_completion_tokens=request.target_completion_tokens,
            cached_tokens=result.cached_tokens, client_prompt_tokens=result.client_prompt_tokens,
            client_completion_tokens=result.client_completion_tokens,
            level=self.level, rate=self.rate, repeat=self.repeat,
        )


@dataclasses.dataclass
class LoadStats:
    """The client's view of one case (summed over its processes)."""

    recorded: int = 0
    warmup: int = 0
    queued: int = 0
    saturated: int = 0
    max_loop_lag_us: int = 0
    processes: int = 1
    # Requests in flight when the case deadline (load.max_case_s) ended the case.
    cut_off: int = 0
    deadline_hit: bool = False
    # Why the rate pattern stopped early (the saturation stop); "" when it did not.
    saturation_stop: str = ""
    # first sent - scheduled (µs) of requests that did not queue, and the waits of those
    # that did; the retry waits (µs) of requests retried after throttling. Packed arrays:
    # 8 bytes a request instead of ~36 in a list of ints (long runs, issue 18).
    dispatch_us: array[int] = dataclasses.field(default_factory=lambda: array("q"))
    queue_wait_us: array[int] = dataclasses.field(default_factory=lambda: array("q"))
    retry_wait_us: array[int] = dataclasses.field(default_factory=lambda: array("q"))

    def merge(self, other: LoadStats) -> None:
        self.recorded += other.recorded
        self.warmup += other.warmup
        self.queued += other.queued
        self.saturated += other.saturated
        self.max_loop_lag_us = max(self.max_loop_lag_us, other.max_loop_lag_us)
        self.dispatch_us += other.dispatch_us
        self.queue_wait_us += other.queue_wait_us
        self.retry_wait_us += other.retry_wait_us
        self.cut_off += other.cut_off
        self.deadline_hit = self.deadline_hit or other.deadline_hit
        self.saturation_stop = self.saturation_stop or other.saturation_stop

    def dispatch_p(self, q: float) -> float:
        """A percentile of the dispatch delay in ms (0 without data)."""
        return float(np.percentile(self.dispatch_us, q)) / 1000 if self.dispatch_us else 0.0

    def warnings(self, plan: LoadPlan, label: str) -> list[str]:
        lines = []
        if self.saturated:
            lines.append(
                f"[fmbench] {label}: WARNING client saturated for {self.saturated} of "
                f"{self.recorded} requests (first sent more than {plan.saturation_ms:g} ms late or "
                f"event-loop lag above it; dispatch delay p99 {self.dispatch_p(99):.1f} ms, "
                f"worst loop lag {self.max_loop_lag_us / 1000:.1f} ms): their timings include "
                "client overhead; spread the load (load.processes) or send less")
        if self.queued:
            waits = np.array(self.queue_wait_us) / 1000
            lines.append(
                f"[fmbench] {label}: {self.queued} of {self.recorded} arrivals found "
                f"{plan.concurrency} requests in flight and waited for a slot (wait p50 "
                f"{np.percentile(waits, 50):.1f} ms, max {waits.max():.1f} ms): the endpoint "
                f"did not keep up with {plan.rate:g} requests/s at that concurrency")
        if self.deadline_hit:
            lines.append(
                f"[fmbench] {label}: WARNING the case reached its deadline (load.max_case_s = "
                f"{plan.max_case_s:g} s) and was stopped: {self.recorded} requests recorded, "
                f"{self.cut_off} of them cut off in flight (recorded as timeout)")
        if self.retry_wait_us:
            waits = np.array(self.retry_wait_us) / 1e6
            lines.append(
                f"[fmbench] {label}: {len(waits)} of {self.recorded} requests were retried after "
                f"throttling (retry wait p50 {np.percentile(waits, 50):.2f} s, max "
                f"{waits.max():.2f} s): the endpoint throttled; its retry wait is reported apart "
                "(retry_wait_*), not as client overhead")
        if self.warmup:
            lines.append(f"[fmbench] {label}: {self.warmup} warm-up request(s) of the first "
                         f"{plan.warmup_s:g} s not recorded")
        return lines


class Collector:
    """The dispatcher's sink: records out, warm-up counted, overhead summed."""

    def __init__(self, context: RecordContext, emit: Emit) -> None:
        self.context = context
        self.emit = emit
        self.stats = LoadStats()
        # Set by ``drive``: live progress samples its count of requests in flight.
        self.dispatcher: Dispatcher | None = None

    def in_flight(self) -> int:
        dispatcher = self.dispatcher
        return dispatcher.in_flight if dispatcher is not None else 0

    def __call__(self, done: Completed) -> None:
        stats = self.stats
        if done.warmup:
            stats.warmup += 1
            return
        stats.recorded += 1
        retry_wait_ns = done.result.retry_wait_ns
        delay_us = (done.result.sent_ns - retry_wait_ns - done.scheduled_ns) // 1000
        if retry_wait_ns:
            stats.retry_wait_us.append(retry_wait_ns // 1000)
        if done.queued:
            stats.queued += 1
            stats.queue_wait_us.append(delay_us)
        else:
            stats.dispatch_us.append(delay_us)
        if done.saturated:
            stats.saturated += 1
        self.emit(self.context.record(done))


@contextlib.contextmanager
def quiet_gc(young_threshold: int = 10_000) -> Iterator[None]:
    """Keep the garbage collector from pausing the load for long (restored afterwards).

    Objects alive at the start (payloads, the config, pytest's own) are frozen out of every
    collection, and young collections run every ``young_threshold`` allocations instead of
    700: a request allocates hundreds of short-lived objects. Measured with the client
    benchmark at 256 in flight: about half the loop-lag spikes, 25 points more of the ideal
    request rate. Collection stays on, so cyclic garbage is still freed.
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(threshold[0], young_threshold), max(threshold[1], 20),
                     max(threshold[2], 100))
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def drive(plan: LoadPlan, client: EndpointClient, requests: Sequence[InferenceRequest],
                collector: Collector) -> LoadStats:
    """Run the plan's pattern on the running loop with a loop-lag monitor; closes the client."""
    monitor = LoopLagMonitor()
    monitor.start()
    dispatcher = Dispatcher(client, collector, plan, monitor)
    collector.dispatcher = dispatcher
    try:
        with quiet_gc():
            pattern = asyncio.ensure_future(get_pattern(plan.pattern).run(plan, requests, dispatcher))
            await _within_deadline(pattern, dispatcher, plan.max_case_s, collector.stats)
    finally:
        await monitor.stop()
        await client.aclose()
    collector.stats.max_loop_lag_us = monitor.max_lag_ns // 1000
    collector.stats.saturation_stop = dispatcher.saturation
    return collector.stats


async def _within_deadline(pattern: asyncio.Future[None], dispatcher: Dispatcher,
                           max_case_s: float | None, stats: LoadStats) -> None:
    """Wait for the pattern; at ``max_case_s`` stop it, keeping every record (REVIEW L4)."""
    done, _ = await asyncio.wait({pattern}, timeout=max_case_s)
    if done:
        pattern.result()  # a pattern's own error propagates
        return
    stats.deadline_hit = True
    dispatcher.cut_off = True  # before the cancellation reaches any request
    pattern.cancel()
    stats.cut_off = await dispatcher.cut_off_in_flight()
    with contextlib.suppress(asyncio.CancelledError):
        await pattern


def run_in_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(make())  # type: ignore[arg-type]
