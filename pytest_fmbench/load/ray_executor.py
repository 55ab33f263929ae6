"""One case's load on a Ray cluster (``load.executor: ray``, the ``ray`` extra).

The load processes of ``load/processes.py`` become Ray actors placed on the cluster's nodes
(a placement group: ``load.ray.placement``), one per node, per CPU or a given number
(``load.ray.actors``). Each actor runs its round-robin share of the same plan with the same
pickled client and requests, on its own event loop, exactly as a local load process does.
The plugin never starts machines: the cluster is the user's (``ray start``, KubeRay, ...),
found at ``load.ray.address``, else ``RAY_ADDRESS``, else ``auto``.

Clocks. Durations (latency, TTFT, ITL) are differences on one actor's monotonic clock and
need no correction. To put every actor's records on the driver's timeline, the driver pings
each actor at the start barrier (``load.ray.clock_pings`` times: t0 here, the actor's clock
r, t1 here) and keeps the ping with the shortest round trip: offset = r - (t0 + t1) / 2,
uncertainty = (t1 - t0) / 2. The start instant is chosen on the driver's timeline and sent to
each actor as ``start + offset`` on its own clock; its records come back moved by
``- offset`` and carry the offset and its uncertainty (``clock_offset_ns``,
``clock_uncertainty_ns``) and the actor's host.

Records stream back in batches (a Ray streaming generator per actor, drained by one thread
each); merging is a concatenation. An actor that is lost (its process or node dies) loses its
own in-flight and unsent requests only: the others run to the end, every record received is
kept, and the case then fails naming the lost actor and its node.

Nothing here imports ``ray`` at module level: without the extra, nothing Ray is imported.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.config.model import RaySettings
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest
from pytest_fmbench.errors import EndpointError
from pytest_fmbench.load.driver import Collector, Emit, LoadStats, RecordContext, drive, run_in_loop
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.redaction import scrub

# The start instant is at least this far ahead, and at least RTT_FACTOR worst round trips:
# every actor must have received it before it passes.
MIN_START_MARGIN_NS = 250_000_000
RTT_FACTOR = 10
FLUSH_EVERY_S = 0.1
# A lost actor is reported after the case deadline plus this grace at the latest.
DEADLINE_GRACE_S = 10.0
INSTALL_FIX = "pip install 'pytest-fmbench[ray]' (on the driver and every node, same versions)"


# -- clocks (pure, unit-tested) ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClockOffset:
    """An actor's clock minus the driver's, from the ping with the shortest round trip."""

    offset_ns: int
    uncertainty_ns: int  # half that round trip: the true offset is within ± this
    rtt_ns: int


def estimate_offset(samples: Sequence[tuple[int, int, int]]) -> ClockOffset:
    """``samples``: (t0 driver, r actor, t1 driver) per ping. Assuming the reply's clock read
    lies within the round trip, the midpoint's error is at most half the round trip, which
    is smallest for the fastest ping (NTP's minimum filter)."""
    if not samples:
        raise ValueError("no clock samples")
    t0, remote, t1 = min(samples, key=lambda s: s[2] - s[0])
    rtt = t1 - t0
    return ClockOffset(remote - (t0 + t1) // 2, (rtt + 1) // 2, rtt)


def start_margin_ns(offsets: Sequence[ClockOffset]) -> int:
    worst = max((o.rtt_ns for o in offsets), default=0)
    return max(MIN_START_MARGIN_NS, RTT_FACTOR * worst)


def to_driver_timeline(record: RequestRecord, clock: ClockOffset) -> RequestRecord:
    """An actor's record with its timestamps moved onto the driver's timeline."""
    shift = clock.offset_ns
    record.scheduled_ns -= shift
    record.sent_ns -= shift
    record.last_byte_ns -= shift
    if record.first_token_ns is not None:
        record.first_token_ns -= shift
    if record.first_reasoning_ns is not None:
        record.first_reasoning_ns -= shift
    record.clock_offset_ns = shift
    record.clock_uncertainty_ns = clock.uncertainty_ns
    return record


def actor_count(actors: str | int, nodes: Sequence[dict[str, Any]],
                resources: dict[str, float]) -> int:
    """How many actors ``load.ray.actors`` asks for on these alive nodes (``ray.nodes()``)."""
    if isinstance(actors, int):
        return actors
    usable = [n for n in nodes if n.get("Alive") and (n.get("Resources") or {}).get("CPU", 0) >= 1
              and all((n.get("Resources") or {}).get(k, 0) >= v for k, v in resources.items())]
    if actors == "per_cpu":
        return int(sum((n.get("Resources") or {}).get("CPU", 0) for n in usable))
    return len(usable)


# -- the actor ------------------------------------------------------------------------------

class LoadProcess:
    """One load process, run by Ray as an actor (``ray.remote(LoadProcess)``)."""

    def __init__(self, index: int, payload: bytes) -> None:
        self.index = index
        self.payload = payload
        self.loaded: tuple[LoadPlan, EndpointClient, list[InferenceRequest], RecordContext] | None = None

    def ready(self) -> dict[str, Any]:
        """Unpickle and import everything before the start barrier; where it runs."""
        import ray

        import pytest_fmbench.load.concurrency
        import pytest_fmbench.load.rate  # noqa: F401 - imported before the start

        self.loaded = pickle.loads(self.payload)
        return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                "pid": os.getpid()}

    def now(self) -> int:
        return now_ns()

    def run(self, start_ns: int) -> Iterator[tuple[str, Any]]:
        """Run this actor's share from ``start_ns`` (its own clock); yields record batches,
        then ``("done", stats)`` or ``("error", message)``."""
        assert self.loaded is not None, "ready() first"
        plan, client, requests, context = self.loaded
        lock = threading.Lock()
        batch: list[RequestRecord] = []
        outcome: list[tuple[str, Any]] = []

        def emit(record: RequestRecord) -> None:
            with lock:
                batch.append(record)

        def load() -> None:
            collector = Collector(context, emit)
            try:
                stats = run_in_loop(lambda: drive(plan.for_process(self.index, start_ns), client,
                                                  requests, collector))
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                outcome.append(("error", f"{type(exc).__name__}: {exc}"))
            else:
                stats.processes = 1
                outcome.append(("done", stats))

        # The event loop runs on its own thread so that batches stream out while it sends.
        runner = threading.Thread(target=load, name=f"fmbench-ray-load-{self.index}", daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(FLUSH_EVERY_S)
            with lock:
                ready, batch[:] = list(batch), []
            if ready:
                yield ("records", ready)
        with lock:
            rest = list(batch)
        if rest:
            yield ("records", rest)
        yield outcome[0] if outcome else ("error", "the load thread ended without an outcome")


# -- the driver -----------------------------------------------------------------------------

def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise EndpointError("load.executor: ray needs the ray package, which is not installed",
                            key="load.executor", fix=INSTALL_FIX) from None
    return ray


def connect(ray: Any, address: str | None) -> str:
    """Join the cluster once per process; the address used."""
    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    if ray.is_initialized():
        return where
    try:
        ray.init(address=where, logging_level="warning", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EndpointError(f"cannot reach the Ray cluster at '{where}': {exc}",
                            key="load.ray.address",
                            fix="start one (ray start --head), or set load.ray.address / "
                                "RAY_ADDRESS to its address") from None
    return where


@dataclasses.dataclass
class _Actor:
    index: int
    handle: Any
    node_id: str = ""
    host: str = ""
    pid: int = 0
    clock: ClockOffset = ClockOffset(0, 0, 0)

    @property
    def label(self) -> str:
        return f"ray load actor {self.index} (node {self.node_id[:12]}, {self.host}, pid {self.pid})"


def run_on_ray(plan: LoadPlan, client: EndpointClient, requests: Sequence[InferenceRequest],
               context: RecordContext, emit: Emit, *,
               log: Callable[[str], Any] | None = None) -> LoadStats:
    ray = ray_module()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    settings = plan.ray or RaySettings()
    where = connect(ray, settings.address)
    count = actor_count(settings.actors, ray.nodes(), settings.resources)
    if plan.pattern == "concurrency":
        count = min(count, plan.concurrency)  # an actor without a worker would idle
    if count < 1:
        raise EndpointError(f"no alive node of the Ray cluster at '{where}' offers a CPU and "
                            f"{settings.resources or 'no other resource'}", key="load.ray.resources",
                            fix="add nodes with those resources, or change load.ray.resources")
    plan = dataclasses.replace(plan, processes=count)
    payload = _pickled(plan, client, requests, context)
    bundle = {"CPU": 1.0, **settings.resources}
    group = placement_group([dict(bundle) for _ in range(count)], strategy=settings.placement.upper())
    actors: list[_Actor] = []
    try:
        ready, _ = ray.wait([group.ready()], timeout=settings.start_timeout_s)
        if not ready:
            raise EndpointError(
                f"the Ray cluster at '{where}' cannot place {count} load actor(s) "
                f"({settings.placement}, each {bundle}) within {settings.start_timeout_s:g} s",
                key="load.ray.actors", fix="ask for fewer actors, another placement, or add nodes")
        remote = ray.remote(LoadProcess)
        for index in range(count):
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
            handle = remote.options(num_cpus=1, resources=settings.resources or None,
                                    max_restarts=0, max_task_retries=0,
                                    runtime_env=settings.runtime_env or None,
                                    scheduling_strategy=strategy).remote(index, payload)
            actors.append(_Actor(index, handle))
        _await_ready(ray, actors, settings.start_timeout_s)
        for actor in actors:
            actor.clock = _measure_clock(ray, actor.handle, settings.clock_pings)
        if log is not None:
            log(_placement_line(context.case_id, actors))
        start_ns = now_ns() + start_margin_ns([a.clock for a in actors])
        return _collect(ray, actors, start_ns, plan, context, emit)
    finally:
        for actor in actors:
            try:
                ray.kill(actor.handle)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        remove_placement_group(group)


def _pickled(plan: LoadPlan, client: EndpointClient, requests: Sequence[InferenceRequest],
             context: RecordContext) -> bytes:
    try:
        return pickle.dumps((plan, client, list(requests), context))
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same fix
        raise EndpointError(
            f"load.executor: ray needs the endpoint's client on other hosts, but "
            f"{type(client).__name__} cannot be pickled ({type(exc).__name__}: {exc})",
            key="load.executor", fix="use load.executor: local for this backend") from None


def _await_ready(ray: Any, actors: list[_Actor], timeout_s: float) -> None:
    try:
        infos = ray.get([a.handle.ready.remote() for a in actors], timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - GetTimeoutError, RayActorError, a pickling error
        raise EndpointError(f"the Ray load actors did not start: {type(exc).__name__}: "
                            f"{_first_line(exc)}", key="load.executor",
                            fix="the nodes need pytest-fmbench and the endpoint's client "
                                "installed (same versions as here); see the Ray logs") from None
    for actor, info in zip(actors, infos):
        actor.node_id, actor.host, actor.pid = str(info["node_id"]), str(info["host"]), int(info["pid"])


def _measure_clock(ray: Any, handle: Any, pings: int) -> ClockOffset:
    samples = []
    for _ in range(pings):
        t0 = now_ns()
        remote = ray.get(handle.now.remote())
        samples.append((t0, int(remote), now_ns()))
    return estimate_offset(samples)


def _placement_line(case_id: str, actors: list[_Actor]) -> str:
    nodes = len({a.node_id for a in actors})
    clocks = ", ".join(f"{a.index}: {a.clock.offset_ns / 1e6:+.3f} ± {a.clock.uncertainty_ns / 1e6:.3f} ms"
                       for a in actors)
    pids = ", ".join(f"{a.index}: {a.host} pid {a.pid}" for a in actors)
    return (f"[fmbench] {case_id}: {len(actors)} Ray load actor(s) on {nodes} node(s) ({pids}); "
            f"clock offset to the driver {clocks}")


def _collect(ray: Any, actors: list[_Actor], start_ns: int, plan: LoadPlan,
             context: RecordContext, emit: Emit) -> LoadStats:
    inbox: queue.SimpleQueue[tuple[int, tuple[str, Any] | None]] = queue.SimpleQueue()
    for actor in actors:
        stream = actor.handle.run.options(num_returns="streaming").remote(
            start_ns + actor.clock.offset_ns)
        threading.Thread(target=_drain, args=(ray, actor.index, stream, inbox), daemon=True,
                         name=f"fmbench-ray-drain-{actor.index}").start()
    stats = LoadStats(processes=len(actors))
    ended: dict[int, str] = {}
    failures: list[str] = []
    deadline = (time.monotonic() + (start_ns - now_ns()) / 1e9 + plan.max_case_s + DEADLINE_GRACE_S
                if plan.max_case_s is not None else None)
    while len(ended) < len(actors):
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            index, message = inbox.get(timeout=timeout)
        except queue.Empty:
            stats.deadline_hit = True
            for actor in actors:
                if actor.index not in ended:
                    failures.append(f"{actor.label} did not finish by the case deadline "
                                    "(load.max_case_s) and was killed")
            break
        actor = actors[index]
        if message is None:
            if index not in ended:
                ended[index] = "lost"
                failures.append(f"{actor.label} ended without finishing")
            continue
        kind, body = message
        if kind == "records":
            for record in body:
                if record.error_detail:  # actors know no secret values: scrub here
                    record.error_detail = scrub(record.error_detail)
                record.host = actor.host
                emit(to_driver_timeline(record, actor.clock))
        elif kind == "done":
            stats.merge(body)
            ended[index] = "done"
        else:  # "error" (the load failed in the actor) or "lost" (the actor or node died)
            ended[index] = kind
            failures.append(f"{actor.label} was lost: {body}" if kind == "lost"
                            else f"{actor.label}: {body}")
    if failures:
        raise EndpointError(
            "Ray load actor failure: " + "; ".join(failures), key="load.executor",
            fix="the records of the other actors, and those received from the failed one, are "
                "kept; only the failed actor's in-flight and unsent requests are lost")
    return stats


def _drain(ray: Any, index: int, stream: Any,
           inbox: queue.SimpleQueue[tuple[int, tuple[str, Any] | None]]) -> None:
    try:
        for ref in stream:
            inbox.put((index, ray.get(ref)))
    except Exception as exc:  # noqa: BLE001 - RayActorError, ActorDiedError, node lost
        inbox.put((index, ("lost", f"{type(exc).__name__}: {_first_line(exc)}")))
    inbox.put((index, None))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
