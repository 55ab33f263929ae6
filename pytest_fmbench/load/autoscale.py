"""``load.processes: auto``: as many load processes as the client needs, found by probing.

Before the case, a short probe (``PROBE_S`` of the case's own pattern at its concurrency or
rate, nothing recorded, like a warm-up) runs with one process. If the client was saturated
in it (more than ``SATURATED_SHARE`` of its requests sent late or under event-loop lag beyond
``load.saturation_ms``, or its worst loop lag beyond that), the probe runs again with twice
the processes, up to the CPUs of this host (and, for the concurrency pattern, the
concurrency). The case then runs with the first count that was not saturated, or the cap.
One log line says what each probe saw and what was chosen.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from pytest_fmbench.endpoints.base import EndpointClient, InferenceRequest
from pytest_fmbench.load.driver import LoadStats, RecordContext
from pytest_fmbench.load.patterns import LoadPlan

PROBE_S = 1.0
SATURATED_SHARE = 0.02


def is_saturated(stats: LoadStats, saturation_ms: float) -> bool:
    share = stats.saturated / stats.recorded if stats.recorded else 0.0
    return share > SATURATED_SHARE or stats.max_loop_lag_us / 1000 > saturation_ms


def process_cap(plan: LoadPlan, cpus: int) -> int:
    cap = max(1, cpus)
    return min(cap, plan.concurrency) if plan.pattern == "concurrency" else cap


def next_count(current: int, saturated: bool, cap: int) -> int | None:
    """The count to probe next, or None to keep ``current``."""
    if not saturated or current >= cap:
        return None
    return min(cap, current * 2)


def choose_processes(plan: LoadPlan, make_client: Callable[[], EndpointClient],
                     requests: Sequence[InferenceRequest], context: RecordContext, *,
                     log: Callable[[str], Any] | None = None, cpus: int | None = None,
                     probe_s: float = PROBE_S) -> LoadPlan:
    """The case's plan with ``processes`` chosen by probing (see the module docstring)."""
    from pytest_fmbench.load.engine import run_load

    cap = process_cap(plan, cpus or os.cpu_count() or 1)
    count, seen = 1, []
    while True:
        probe = dataclasses.replace(plan, processes=count, auto_processes=False, requests=None,
                                    duration_s=probe_s, warmup_s=min(plan.warmup_s, probe_s / 4),
                                    max_case_s=None)
        stats = run_load(probe, make_client, requests, context, lambda record: None)
        saturated = is_saturated(stats, plan.saturation_ms)
        share = stats.saturated / stats.recorded if stats.recorded else 0.0
        seen.append(f"{count}: {share:.0%} saturated, loop lag max "
                    f"{stats.max_loop_lag_us / 1000:.1f} ms")
        following = next_count(count, saturated, cap)
        if following is None:
            break
        count = following
    if log is not None:
        log(f"[fmbench] {context.case_id}: load.processes auto -> {count} (probes of "
            f"{probe_s:g} s, not recorded: {'; '.join(seen)}; cap {cap})")
    return dataclasses.replace(plan, processes=count, auto_processes=False)
