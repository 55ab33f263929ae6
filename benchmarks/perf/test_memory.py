"""Bounded memory over a long run (issue 18): RSS of this process during a ``rate`` case.

    pytest benchmarks/perf/test_memory.py -s -k 1min     # quick check
    pytest benchmarks/perf/test_memory.py -s -k 10min    # the acceptance run

A ``rate`` case at 1,000 requests/s against the zero-delay server (16 content chunks), driven
by the plugin's own path: the load engine, ``OpenAIClient``, and ``CaseRecorder`` (each record
appended and flushed to the records file as it completes, kept by offset, the summary
streamed; the Arrow side file written in batches). RSS is sampled every second. Targets: RSS
flat after the first minute (the 1-minute check: after its first 12 s), growth at most
32 MiB; peak at most 600 MiB; every record on disk; metrics from the case's records
(side-file batches) identical to metrics from the JSON lines parsed on their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from guard import check, margin

from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.columnar import ColumnarRecordWriter, _json_range
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.stored import CaseRecorder
from pytest_fmbench.metrics import compute_metrics

SERVER = Path(__file__).with_name("server.py")
RATE = 1000.0
PEAK_BYTES = 600 * 1024**2
GROWTH_BYTES = 32 * 1024**2


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append((time.monotonic() - self.started_at, rss_bytes()))


@pytest.fixture(scope="module")
def instant() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, str(SERVER), "--delay", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("PORT "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}"
    process.terminate()
    process.wait(10)


@pytest.mark.parametrize("duration_s", [
    pytest.param(60, id="1min"), pytest.param(600, id="10min")])
def test_rss_flat_over_a_long_rate_case(instant: str, tmp_path: Path, duration_s: int) -> None:
    settle_s = min(60.0, duration_s / 5)
    requests = [InferenceRequest(f"<id:{i}>", {"max_new_tokens": 16}, 8) for i in range(1000)]
    writer = ColumnarRecordWriter(tmp_path / "records.jsonl")
    recorder = CaseRecorder(writer, "soak")
    plan = LoadPlan("rate", 64, requests=int(RATE * duration_s), rate=RATE, arrival="poisson",
                    timeout_s=60)
    sampler = RssSampler()
    sampler.start()
    try:
        stats = run_load(plan, lambda: OpenAIClient(instant, timeout_s=60, keep_text=False), requests,
                         RecordContext("perf", "soak", "p", 64, "soak"), recorder)
    finally:
        sampler.stop.set()
        sampler.join()
        writer.checkpoint()
        writer.close()
    wall = sampler.samples[-1][0]
    settled = [rss for at, rss in sampler.samples if at <= settle_s][-1]
    later = [rss for at, rss in sampler.samples if at > settle_s]
    peak = max(rss for _, rss in sampler.samples)
    growth = max(later, default=settled) - settled
    count = len(recorder.records)
    with open(writer.path, "rb") as handle:
        lines = sum(1 for _ in handle)
    summary = recorder.aggregate.summary()
    print(f"\n[perf] soak {duration_s} s: {count} records in {wall:.0f} s ({count / wall:.0f}/s, "
          f"{summary['errors']} errors, {stats.queued} queued, {stats.saturated} saturated); RSS at "
          f"{settle_s:.0f} s {settled / 2**20:.0f} MiB, growth after {growth / 2**20:+.1f} MiB, peak "
          f"{peak / 2**20:.0f} MiB")
    # Every record on disk, and the same metrics from the side file's batches and from the
    # JSON lines parsed on their own.
    assert count == lines == stats.recorded == int(RATE * duration_s)
    from_case = compute_metrics(recorder.records)
    from_lines = compute_metrics(_json_range(writer.path, 0, writer.path.stat().st_size))
    assert from_case.equals(from_lines)
    m = margin()
    results = [
        check(f"soak_{duration_s}s_rss_growth_mib", growth / 2**20, GROWTH_BYTES / 2**20, "MiB",
              higher_is_better=False, margin=m),
        check(f"soak_{duration_s}s_rss_peak_mib", peak / 2**20, PEAK_BYTES / 2**20, "MiB",
              higher_is_better=False, margin=m),
    ]
    assert all(results)
