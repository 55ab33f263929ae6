"""One process clock: monotonic intervals placed on the shared wall-clock timeline.

Each process takes ``time.perf_counter_ns()`` and ``time.time_ns()`` once, together; every
timestamp is then ``anchor_wall + (perf_counter_ns() - anchor_perf)``. Differences between two
timestamps of one process are exact monotonic intervals, and timestamps from several processes
or hosts land on one timeline (to the precision of their wall clocks).
"""

from __future__ import annotations

import time

_ANCHOR_PERF = time.perf_counter_ns()
_ANCHOR_WALL = time.time_ns()


def now_ns() -> int:
    """Nanoseconds on the shared timeline, taken from the monotonic clock."""
    return _ANCHOR_WALL + (time.perf_counter_ns() - _ANCHOR_PERF)


def anchor() -> tuple[int, int]:
    """(wall ns, perf ns) taken together at process start."""
    return _ANCHOR_WALL, _ANCHOR_PERF
