"""How close the client gets to the physical limit (not part of the test suite).

    pytest benchmarks/perf -s

Runs the real load engine, ``OpenAIClient`` and records file (each record appended to a
``records.jsonl`` as it completes, as in a benchmark run) against ``server.py`` (a separate
process, pre-rendered SSE, 16 content chunks) and prints, per run:

- fixed 50 ms delay, concurrency 1, 64, 256, 1024: achieved request rate vs the ideal
  (concurrency / delay), reported latency minus the server's true hold time (p50, p99), and
  content chunks/s;
- zero delay: requests/s with ``load.processes`` 1 and 2;
- rate mode: the asked rate vs the delivered one over 10,000 requests.

Targets (issue 18, 2-core machine): c=64 >= 97 % of ideal, p50 within 0.5 ms of the true
hold, p99 within 2 ms; c=256 >= 95 %; zero delay >= 5,000 requests/s in one process; rate
within 1 %. Each figure is printed beside its target and the previous run's (``guard.py``)
and asserted; the machine load is printed with it: on a shared machine run it more than once.

The tests marked ``smoke`` are the CI check (``.ci/run``): shorter, with the targets loosened
so that only a large regression fails. ``FMBENCH_PERF_MARGIN`` loosens the full targets.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.columnar import ColumnarRecordWriter
from pytest_fmbench.load.engine import LoadStats, RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.load.stored import CaseRecorder

sys.path.insert(0, str(Path(__file__).parent))

from guard import LINES, check, margin

SERVER = Path(__file__).with_name("server.py")
DELAY_S = 0.05
PROMPTS = 200_000
RESULTS: list[str] = []


class BenchServer:
    def __init__(self, delay: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("PORT "), line
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def holds(self) -> dict[int, int]:
        with urllib.request.urlopen(self.url + "/holds", timeout=30) as response:
            return {int(k): v for k, v in json.loads(response.read()).items()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def delayed() -> Iterator[BenchServer]:
    server = BenchServer(DELAY_S)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def instant() -> Iterator[BenchServer]:
    server = BenchServer(0.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prompts() -> list[InferenceRequest]:
    return [InferenceRequest(f"<id:{i}>", {"max_new_tokens": 16}, 8) for i in range(PROMPTS)]


def load() -> str:
    return "load avg " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the load processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CPU_USED: list[float] = [0.0]


class GcPauses:
    """The garbage collector's pauses during a run (a cause of event-loop lag to rule out).

    Full collections are counted apart: the load engine runs one on purpose before it starts.
    """

    def __init__(self) -> None:
        self.started = 0
        self.young_ns: list[int] = []
        self.full = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        elif info["generation"] == 2:
            self.full += 1
        else:
            self.young_ns.append(time.perf_counter_ns() - self.started)

    def __str__(self) -> str:
        worst = max(self.young_ns, default=0) / 1e6
        return f"gc: {len(self.young_ns)} young, worst {worst:.1f} ms, {self.full} full"


GC: list[GcPauses] = [GcPauses()]


def drive(server: BenchServer, plan: LoadPlan, prompts: list[InferenceRequest]
          ) -> tuple[list[RequestRecord], LoadStats, dict[int, int]]:
    server.holds()  # forget earlier runs
    # What the plugin does with each record (run.py): appended and flushed to records.jsonl
    # as it completes (its Arrow copy in batches), kept by offset, the summary streamed.
    writer = ColumnarRecordWriter(Path(tempfile.mkdtemp(prefix="fmbench-perf-")) / "records.jsonl")
    emit = CaseRecorder(writer, "perf")
    started_cpu, started = cpu_s(), time.monotonic()
    GC[0] = pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        stats = run_load(plan, lambda: OpenAIClient(server.url, timeout_s=60, keep_text=False),
                         prompts, RecordContext("perf", "perf", "p", plan.concurrency, "perf"),
                         emit)
    finally:
        gc.callbacks.remove(pauses)
        writer.close()
        CPU_USED[0] = (cpu_s() - started_cpu) / (time.monotonic() - started)
        records = list(emit.records)  # read back from the records file, as the plugin would
        shutil.rmtree(writer.path.parent, ignore_errors=True)
    return records, stats, server.holds()


def report(line: str) -> None:
    RESULTS.append(line)
    print("\n" + line, flush=True)


def span_s(records: list[RequestRecord]) -> float:
    return (max(r.last_byte_ns for r in records) - min(r.sent_ns for r in records)) / 1e9


# (rate as a fraction of ideal, p50 extra ms, p99 extra ms) per concurrency, one process.
TARGETS = {64: (0.97, 0.5, 2.0), 256: (0.95, None, None)}
# The CI smoke: 97 % loosened to 85 %.
SMOKE_RATE_MARGIN = 0.97 / 0.85


def fixed_delay(delayed: BenchServer, prompts: list[InferenceRequest], concurrency: int,
                processes: int, duration_s: float, label: str, loosen: float) -> list[bool]:
    plan = LoadPlan("concurrency", concurrency, duration_s=duration_s if concurrency > 1 else 4.0,
                    warmup_s=0.5, timeout_s=60, processes=processes)
    records, stats, holds = drive(delayed, plan, prompts)
    ok = [r for r in records if r.ok]
    errors = len(records) - len(ok)
    span = span_s(ok)
    rate = len(ok) / span
    ideal = concurrency / DELAY_S
    extra_ms = np.array([(r.last_byte_ns - r.sent_ns - holds[r.request_id]) / 1e6
                         for r in ok if r.request_id in holds])
    hold_ms = np.array([holds[r.request_id] / 1e6 for r in ok if r.request_id in holds])
    chunks = sum(len(r.itl_us) + 1 for r in ok)
    p50, p99 = np.percentile(extra_ms, [50, 99])
    report(f"fixed {DELAY_S * 1000:.0f} ms, c={concurrency:<4} p={processes} {len(ok):>6} req {errors} err: "
           f"{rate:8.0f} req/s = {rate / ideal:6.1%} of ideal {ideal:.0f} "
           f"(of c/mean hold: {rate / (concurrency / (hold_ms.mean() / 1000)):.1%}); "
           f"latency - true hold p50 {p50:+.2f} ms p99 {p99:+.2f} ms; "
           f"{chunks / span:8.0f} chunks/s; dispatch p99 {stats.dispatch_p(99):.2f} ms, "
           f"max loop lag {stats.max_loop_lag_us / 1000:.1f} ms, saturated {stats.saturated}, "
           f"client CPU {CPU_USED[0]:.2f} cores, {GC[0]}  [{load()}]")
    targets = TARGETS.get(concurrency) if processes == 1 else None
    if not targets:
        return []
    need_rate, need_p50, need_p99 = targets
    m = loosen
    met = [check(f"{label}c{concurrency}_rate_of_ideal", rate / ideal * 100, need_rate * 100, "%",
                 higher_is_better=True, margin=m)]
    if label == "smoke_":
        return met  # the timing errors need a quiet machine: printed above, not judged
    if need_p50 is not None:
        met.append(check(f"{label}c{concurrency}_p50_error_ms", p50, need_p50, "ms",
                         higher_is_better=False, margin=m))
    if need_p99 is not None:
        met.append(check(f"{label}c{concurrency}_p99_error_ms", p99, need_p99, "ms",
                         higher_is_better=False, margin=m))
    return met


@pytest.mark.parametrize(("concurrency", "processes"), [
    (1, 1), (64, 1), (256, 1), (1024, 1), (256, 2), (1024, 2)])
def test_fixed_delay(delayed: BenchServer, prompts: list[InferenceRequest], concurrency: int,
                     processes: int) -> None:
    assert all(fixed_delay(delayed, prompts, concurrency, processes, 3.0, "", margin()))


@pytest.mark.smoke
def test_smoke_fixed_delay_c64(delayed: BenchServer, prompts: list[InferenceRequest]) -> None:
    """CI: c=64 for 2 s must reach 85 % of the ideal rate (the timing errors are printed,
    not asserted: a 2-core CI box shares its cores with the server)."""
    assert all(fixed_delay(delayed, prompts, 64, 1, 2.0, "smoke_", SMOKE_RATE_MARGIN))


@pytest.mark.parametrize("processes", [1, 2])
def test_zero_delay(instant: BenchServer, prompts: list[InferenceRequest], processes: int) -> None:
    plan = LoadPlan("concurrency", 64, duration_s=4.0, warmup_s=0.5, timeout_s=60,
                    processes=processes)
    records, _, _ = drive(instant, plan, prompts)
    ok = [r for r in records if r.ok]
    rate = len(ok) / span_s(ok)
    report(f"zero delay, 16 chunks, c=64, processes={processes}: {len(ok)} req "
           f"{len(records) - len(ok)} err, {rate:8.0f} req/s, client CPU {CPU_USED[0]:.2f} cores"
           f"  [{load()}]")
    if processes == 1:
        assert check("zero_delay_req_per_s", rate, 5000, "req/s", higher_is_better=True, margin=margin())


def test_rate(delayed: BenchServer, prompts: list[InferenceRequest]) -> None:
    asked = 1000.0
    plan = LoadPlan("rate", 256, requests=10_000, rate=asked, arrival="poisson", timeout_s=60)
    started = time.monotonic()
    records, stats, _ = drive(delayed, plan, prompts)
    records.sort(key=lambda r: r.scheduled_ns)
    sent = np.array(sorted(r.sent_ns for r in records))
    delivered = (len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9)
    late_ms = np.array([(r.sent_ns - r.scheduled_ns) / 1e6 for r in records])
    error = delivered / asked - 1
    report(f"rate {asked:.0f}/s poisson, {len(records)} req "
           f"({sum(not r.ok for r in records)} err, {stats.queued} queued): delivered "
           f"{delivered:.1f}/s ({error:+.2%}); sent - scheduled p50 {np.percentile(late_ms, 50):.2f} "
           f"ms p99 {np.percentile(late_ms, 99):.2f} ms max {late_ms.max():.1f} ms; "
           f"wall {time.monotonic() - started:.1f} s  [{load()}]")
    assert check("rate_error_pct", abs(error) * 100, 1.0, "%", higher_is_better=False, margin=margin())


def test_zz_summary() -> None:
    print("\n\nclient benchmark summary (" + os.uname().nodename + f", {os.cpu_count()} CPUs):")
    for line in RESULTS:
        print("  " + line)
    print("targets:")
    for line in LINES:
        print("  " + line)
