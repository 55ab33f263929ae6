"""One process clock: monotonic intervals placed on the shared wall-clock timeline.

Each process takes ``time.perf_counter_ns()`` and ``time.time_ns()`` once, together; every
timestamp is then ``anchor_wall + (perf_counter_ns() - anchor_perf)``. Differences between two
timestamps of one process are exact monotonic intervals, and timestamps from several processes
or hosts land on one timeline (to the precision of their wall clocks).
"""

from __future__ import annotations

import os
import time

# Tests only: a wall clock this many ns off, to prove that the clock offset of a load process
# on another "host" (load.executor: ray, set through its runtime_env) is measured and undone.
SKEW_ENV = "FMBENCH_TEST_CLOCK_SKEW_NS"

_ANCHOR_PERF = time.perf_counter_ns()
_ANCHOR_WALL = time.time_ns() + int(os.environ.get(SKEW_ENV) or 0)


def now_ns() -> int:
    """Nanoseconds on the shared timeline, taken from the monotonic clock."""
    return _ANCHOR_WALL + (time.perf_counter_ns() - _ANCHOR_PERF)


def anchor() -> tuple[int, int]:
    """(wall ns, perf ns) taken together at process start."""
    return _ANCHOR_WALL, _ANCHOR_PERF
