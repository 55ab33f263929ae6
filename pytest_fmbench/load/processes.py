"""One case's load spread over several processes (``load.processes``).

Each process is started fresh (``spawn``: no inherited threads, sockets or event loops), gets
the plan, the requests and the endpoint's client by pickling, and runs its share of the
pattern on its own event loop with its own clock anchor (``pytest_fmbench.clock``). All start
together at one instant on the shared timeline, sent once every process is ready.

Records come back in batches over a pipe, from a sender thread so the event loop never blocks
on it, and the parent hands them to ``emit`` as they arrive: merging is a concatenation.

A client goes to another process by pickling, so it must open its connections lazily (in
``invoke``) and hold only picklable state; ``OpenAIClient`` does.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest
from pytest_fmbench.errors import EndpointError
from pytest_fmbench.load.driver import Collector, Emit, LoadStats, RecordContext, drive, run_in_loop
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.redaction import scrub

READY_TIMEOUT_S = 120.0
# A child past the case deadline gets this long to send its cut-off records, then is killed.
DEADLINE_GRACE_S = 10.0
START_MARGIN_NS = 50_000_000
FLUSH_EVERY_S = 0.1


def run_in_processes(plan: LoadPlan, client: EndpointClient, requests: Sequence[InferenceRequest],
                     context: RecordContext, emit: Emit) -> LoadStats:
    try:
        payload = pickle.dumps((plan, client, list(requests), context))
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same fix
        raise EndpointError(
            f"load.processes: {plan.processes} needs the endpoint's client in other processes, "
            f"but {type(client).__name__} cannot be pickled ({type(exc).__name__}: {exc})",
            key="load.processes",
            fix="use load.processes: 1 for this backend, or make its client picklable "
                "(open connections lazily in invoke)") from None
    ctx = multiprocessing.get_context("spawn")
    links: list[tuple[Any, Connection]] = []
    stats = LoadStats(processes=plan.processes)
    try:
        for index in range(plan.processes):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_child, args=(theirs, index, payload), daemon=True,
                                  name=f"fmbench-load-{index}")
            process.start()
            theirs.close()
            links.append((process, mine))
        _await_ready(links)
        start_ns = now_ns() + START_MARGIN_NS
        for _, conn in links:
            conn.send(("go", start_ns))
        deadline = (time.monotonic() + plan.max_case_s + DEADLINE_GRACE_S
                    if plan.max_case_s is not None else None)
        _collect(links, emit, stats, deadline)
    finally:
        for process, conn in links:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            conn.close()
    return stats


def _await_ready(links: list[tuple[Any, Connection]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = {conn: process for process, conn in links}
    while pending:
        left = deadline - time.monotonic()
        ready = cast(list[Connection], wait(list(pending), timeout=max(0.0, left)))
        if not ready:
            raise EndpointError(f"{len(pending)} load process(es) did not start within "
                                f"{READY_TIMEOUT_S:g} s", key="load.processes")
        for conn in ready:
            message = _receive(conn, pending[conn])
            if message[0] != "ready":
                raise EndpointError(f"load process failed to start: {message[1]}",
                                    key="load.processes")
            del pending[conn]


def _collect(links: list[tuple[Any, Connection]], emit: Emit, stats: LoadStats,
             deadline: float | None = None) -> None:
    """Records as they arrive until every child is done; a child still running at
    ``deadline`` (monotonic) is killed, and the records received stay (REVIEW L4)."""
    pending = {conn: process for process, conn in links}
    failures = []
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = cast(list[Connection], wait(list(pending), timeout=left))
        if not ready and deadline is not None and time.monotonic() >= deadline:
            stats.deadline_hit = True
            for conn, process in pending.items():
                process.kill()
                failures.append(f"{process.name} did not finish by the case deadline "
                                "(load.max_case_s) and was killed")
            break
        for conn in ready:
            process = pending[conn]
            try:
                kind, body = cast(tuple[str, Any], conn.recv())
            except (EOFError, OSError):
                process.join(timeout=5)
                failures.append(f"{process.name} ended without finishing (exit code {process.exitcode})")
                del pending[conn]
                continue
            if kind == "records":
                for record in body:
                    if record.error_detail:  # children know no secret values: scrub here
                        record.error_detail = scrub(record.error_detail)
                    emit(record)
            elif kind == "done":
                stats.merge(body)
                del pending[conn]
            elif kind == "error":
                failures.append(f"{process.name}: {body}")
                del pending[conn]
    if failures:
        raise EndpointError("load process failure: " + "; ".join(failures), key="load.processes",
                            fix="the records received before the failure are kept; see the "
                                "message above")


def _receive(conn: Connection, process: Any) -> tuple[str, Any]:
    try:
        message: tuple[str, Any] = conn.recv()
        return message
    except (EOFError, OSError):
        process.join(timeout=5)
        return ("error", f"{process.name} exited with code {process.exitcode}")


# -- the child side ---------------------------------------------------------------------------

def _child(conn: Connection, index: int, payload: bytes) -> None:
    try:
        plan, client, requests, context = pickle.loads(payload)
        import pytest_fmbench.load.concurrency
        import pytest_fmbench.load.rate  # noqa: F401 - imported before the start
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    _, start_ns = conn.recv()
    outbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_all, args=(conn, outbox), daemon=True)
    sender.start()
    batch: list[RequestRecord] = []
    last_flush = time.monotonic()

    def emit(record: RequestRecord) -> None:
        nonlocal batch, last_flush
        batch.append(record)
        now = time.monotonic()
        if now - last_flush >= FLUSH_EVERY_S:
            outbox.put(("records", batch))
            batch, last_flush = [], now

    collector = Collector(context, emit)
    try:
        stats = run_in_loop(lambda: drive(plan.for_process(index, start_ns), client, requests,
                                          collector))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        outbox.put(("records", batch))
        outbox.put(("error", f"{type(exc).__name__}: {exc}"))
    else:
        outbox.put(("records", batch))
        stats.processes = 1
        outbox.put(("done", stats))
    outbox.put(None)
    sender.join()


def _send_all(conn: Connection, outbox: queue.SimpleQueue[tuple[str, Any] | None]) -> None:
    while (message := outbox.get()) is not None:
        conn.send(message)
