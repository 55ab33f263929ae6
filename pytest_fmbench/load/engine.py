"""Driving one case's load: a pattern, a client, records out, and the client's own overhead.

``plan_load`` turns the merged ``load:`` settings into a ``LoadPlan``; ``run_load`` runs it in
this process (one event loop, uvloop when installed) or over ``load.processes`` processes,
passes each recorded request to ``emit`` as it completes, and logs a warning line when the
client was saturated or the rate pattern had to queue arrivals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from pytest_fmbench.config.model import LoadSettings, RaySettings, Workload
from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest
from pytest_fmbench.load.driver import (
    Collector,
    Emit,
    LoadStats,
    RecordContext,
    drive,
    quiet_gc,
    run_in_loop,
)
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.processes import run_in_processes
from pytest_fmbench.load.waves import plan_waves

# Imported from here by the package and its users since before driver.py existed.
__all__ = ["Collector", "Emit", "LoadStats", "RecordContext", "drive", "plan_load",
           "quiet_gc", "run_in_loop", "run_load", "workload_plan"]


def plan_load(settings: LoadSettings, concurrency: int, payload_count: int) -> LoadPlan:
    """The plan of one case. Without a bound, concurrency/rate send as many requests as waves."""
    assert settings.min_iters_per_combination and settings.max_iters_per_combination
    waves = plan_waves(payload_count, concurrency, settings.min_iters_per_combination,
                       settings.max_iters_per_combination)
    requests = settings.requests
    if settings.pattern != "waves" and requests is None and settings.duration_s is None:
        requests = waves.requests
    auto = settings.processes == "auto" and settings.pattern != "waves"
    processes = 1 if settings.processes == "auto" else settings.processes or 1
    if settings.pattern == "concurrency":
        processes = min(processes, concurrency)  # a process without a worker would idle
    return LoadPlan(
        pattern=settings.pattern, concurrency=concurrency, requests=requests,
        duration_s=settings.duration_s, waves=waves.waves, rate=settings.rate,
        arrival=settings.arrival or "poisson", burstiness=settings.burstiness or 1.0,
        seed=settings.seed or 0, warmup_s=settings.warmup_s or 0.0,
        timeout_s=settings.request_timeout_s or 120.0,
        saturation_ms=settings.saturation_ms or 10.0,
        max_case_s=settings.max_case_s,
        processes=processes if settings.pattern != "waves" else 1,
        auto_processes=auto,
        executor=settings.executor or "local",
        ray=(settings.ray or RaySettings()) if settings.executor == "ray" else None,
    )


def workload_plan(plan: LoadPlan, workload: Workload, requests: int | None) -> LoadPlan:
    """A trace or sessions workload brings its own pattern: every trace entry (every
    session) once, capped by an explicit ``load.requests``; other workloads keep the plan."""
    from pytest_fmbench.data.workloads import PATTERN_OF_KIND

    pattern = PATTERN_OF_KIND.get(workload.kind)
    if pattern is None:
        return plan
    return dataclasses.replace(plan, pattern=pattern, requests=requests, duration_s=None,
                               think_time_s=workload.think_time_s)


def run_load(plan: LoadPlan, make_client: Callable[[], EndpointClient],
             requests: Sequence[InferenceRequest], context: RecordContext, emit: Emit, *,
             log: Callable[[str], Any] | None = None,
             on_start: Callable[[Collector], Any] | None = None) -> LoadStats:
    """Fire one case's load; every recorded request reaches ``emit`` as it completes.

    ``on_start`` gets the in-process collector before the load starts (live progress reads
    its in-flight count); not called when the load is spread over processes or Ray actors.
    """
    if plan.auto_processes and plan.executor == "local":
        from pytest_fmbench.load.autoscale import choose_processes

        plan = choose_processes(plan, make_client, requests, context, log=log)
    if plan.executor == "ray":
        from pytest_fmbench.load.ray_executor import run_on_ray  # imports ray itself, lazily

        stats = run_on_ray(plan, make_client(), requests, context, emit, log=log)
    elif plan.processes > 1:
        stats = run_in_processes(plan, make_client(), requests, context, emit)
    else:
        collector = Collector(context, emit)
        if on_start is not None:
            on_start(collector)

        async def go() -> LoadStats:
            return await drive(plan, make_client(), requests, collector)

        stats = run_in_loop(go)
    if log is not None:
        for line in stats.warnings(plan, context.case_id):
            log(line)
    return stats
