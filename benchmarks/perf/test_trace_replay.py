"""Trace replay precision (issue 13): 1,000 timestamped requests, one process, p99 of
``sent − offset`` within 2 ms (not part of the test suite; a timed assertion).

    pytest benchmarks/perf/test_trace_replay.py -s

The trace is Poisson arrivals at 200 requests/s (5 s), replayed by the real load engine
(``trace`` pattern, ``OpenAIClient``, records appended to a file) against ``server.py``
with zero delay in a separate process, so the server never takes the client's CPU or GIL.
The machine load is printed with the result: a loaded shared machine can miss the target
through no fault of the client; run it again on a quiet one before reading a miss.
"""

from __future__ import annotations

import numpy as np

from benchmarks.perf.test_client import BenchServer, drive, load, report
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.rate import arrival_offsets

REQUESTS = 1000
RATE = 200.0
TARGET_P99_MS = 2.0


def test_trace_replay_sends_each_request_within_2_ms_of_its_offset() -> None:
    offsets = arrival_offsets(REQUESTS, RATE, "poisson", seed=13).tolist()
    requests = [InferenceRequest(f"<id:{i}>", {"max_new_tokens": 16}, 8, offset_ns=offset)
                for i, offset in enumerate(offsets)]
    server = BenchServer(0.0)
    try:
        plan = LoadPlan("trace", concurrency=REQUESTS, timeout_s=60)
        records, stats, _ = drive(server, plan, requests)
    finally:
        server.stop()
    assert len(records) == REQUESTS and all(r.ok for r in records)
    start = min(r.scheduled_ns - requests[r.request_id].offset_ns for r in records)
    assert all(r.scheduled_ns - start == requests[r.request_id].offset_ns for r in records)
    late_ms = np.array([(r.sent_ns - r.scheduled_ns) / 1e6 for r in records])
    p50, p99 = np.percentile(late_ms, 50), np.percentile(late_ms, 99)
    report(f"trace replay {REQUESTS} req at {RATE:.0f}/s poisson, 1 process: sent - offset "
           f"p50 {p50:.3f} ms p99 {p99:.3f} ms max {late_ms.max():.2f} ms, min "
           f"{late_ms.min():.3f} ms, {stats.queued} queued"
           f"{'  MEETS target' if p99 <= TARGET_P99_MS else '  MISSES target'}  [{load()}]")
    assert late_ms.min() >= 0, "a request was sent before its offset"
    assert p99 <= TARGET_P99_MS, f"p99 {p99:.3f} ms over {TARGET_P99_MS} ms ({load()})"

