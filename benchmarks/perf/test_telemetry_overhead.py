"""Telemetry must not change what the client measures (issue 17; not part of the test suite).

    pytest benchmarks/perf/test_telemetry_overhead.py -s

The client benchmark's server (``server.py``, 50 ms true hold, 16 chunks) takes the load; a
second process serves a vLLM-sized Prometheus exposition (about 1,400 samples, histograms
included) at ``/metrics``. Runs alternate telemetry off / on (scrape + host sampling every
0.25 s, four times the default rate, by the real sampler process), three of each, in the same
test, at c=64 and c=256. Printed per run and as the mean of each side: achieved rate as a share
of the ideal, latency minus the server's true hold (p50, p99), worst event-loop lag.

Asserted (loose on purpose, the machine is shared): with telemetry on, the mean rate is within
3 % of the off runs' and the mean p50 within 1 ms, p99 within 5 ms.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from test_client import DELAY_S, BenchServer, drive, load, span_s

from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.telemetry.sampler import SamplerProcess

INTERVAL_S = 0.25
RUNS = 3


def exposition() -> str:
    """About the size of a busy vLLM's /metrics: gauges, counters, 40 histograms x 30 buckets."""
    lines = ["# TYPE vllm:num_requests_running gauge", 'vllm:num_requests_running{model_name="m"} 12',
             "# TYPE vllm:num_requests_waiting gauge", 'vllm:num_requests_waiting{model_name="m"} 3',
             "# TYPE vllm:kv_cache_usage_perc gauge", 'vllm:kv_cache_usage_perc{model_name="m"} 0.4',
             "# TYPE vllm:generation_tokens counter", 'vllm:generation_tokens_total{model_name="m"} 1e6']
    for h in range(40):
        lines.append(f"# TYPE vllm:hist_{h}_seconds histogram")
        for b in range(30):
            lines.append(f'vllm:hist_{h}_seconds_bucket{{le="{0.001 * 2 ** b:g}",model_name="m"}} {b * 7}')
        lines.append(f'vllm:hist_{h}_seconds_bucket{{le="+Inf",model_name="m"}} 300')
        lines.append(f'vllm:hist_{h}_seconds_count{{model_name="m"}} 300')
        lines.append(f'vllm:hist_{h}_seconds_sum{{model_name="m"}} 12.5')
    return "\n".join(lines) + "\n"


METRICS_SERVER = textwrap.dedent("""\
    import http.server, sys
    body = open(sys.argv[1], "rb").read()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """)


@pytest.fixture(scope="module")
def metrics_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("metrics")
    (folder / "metrics.txt").write_text(exposition())
    (folder / "serve.py").write_text(METRICS_SERVER)
    process = subprocess.Popen([sys.executable, str(folder / "serve.py"), str(folder / "metrics.txt")],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield f"http://127.0.0.1:{port}/metrics"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def delayed() -> Iterator[BenchServer]:
    server = BenchServer(DELAY_S)
    yield server
    server.stop()


def one_run(server: BenchServer, concurrency: int, sampler: SamplerProcess | None,
            url: str) -> dict[str, Any]:
    prompts = [InferenceRequest(f"<id:{i}>", {"max_new_tokens": 16}, 8) for i in range(200_000)]
    plan = LoadPlan("concurrency", concurrency, duration_s=3.0, warmup_s=0.5, timeout_s=60)
    scrapes = 0
    if sampler is not None:
        started = sampler.start({"interval_s": INTERVAL_S, "prometheus_url": url, "host": True,
                                 "server_metrics": []})
        assert "prometheus" in started["available"], started
    try:
        records, stats, holds = drive(server, plan, prompts)
    finally:
        if sampler is not None:
            scrapes = sum(1 for s in sampler.stop()["samples"] if s["source"] == "prometheus")
    ok = [r for r in records if r.ok]
    extra_ms = np.array([(r.last_byte_ns - r.sent_ns - holds[r.request_id]) / 1e6
                         for r in ok if r.request_id in holds])
    return {"rate": len(ok) / span_s(ok) / (concurrency / DELAY_S),
            "p50": float(np.percentile(extra_ms, 50)), "p99": float(np.percentile(extra_ms, 99)),
            "lag": stats.max_loop_lag_us / 1000, "scrapes": scrapes, "requests": len(ok)}


@pytest.mark.parametrize("concurrency", [64, 256])
def test_client_rate_and_latency_are_the_same_with_telemetry_on_and_off(
        delayed: BenchServer, metrics_url: str, concurrency: int) -> None:
    sampler = SamplerProcess()
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        for _ in range(RUNS):
            for side in ("off", "on"):
                run = one_run(delayed, concurrency, sampler if side == "on" else None, metrics_url)
                results[side].append(run)
                print(f"\nc={concurrency} telemetry {side:3}: {run['requests']} req, rate {run['rate']:.1%} "
                      f"of ideal, latency - true hold p50 {run['p50']:+.2f} ms p99 {run['p99']:+.2f} ms, "
                      f"worst loop lag {run['lag']:.1f} ms, {run['scrapes']} scrapes  [{load()}]",
                      flush=True)
                time.sleep(0.5)
    finally:
        sampler.close()
    mean = {side: {k: float(np.mean([r[k] for r in runs])) for k in ("rate", "p50", "p99", "lag")}
            for side, runs in results.items()}
    print(f"\nc={concurrency} MEAN of {RUNS}: off rate {mean['off']['rate']:.1%} p50 "
          f"{mean['off']['p50']:+.2f} p99 {mean['off']['p99']:+.2f} ms | on rate {mean['on']['rate']:.1%} "
          f"p50 {mean['on']['p50']:+.2f} p99 {mean['on']['p99']:+.2f} ms (scrape every {INTERVAL_S} s "
          f"of a {len(exposition()) // 1024} KiB exposition + host)  [{load()}]", flush=True)
    assert all(r["scrapes"] >= 10 for r in results["on"])  # it really scraped while measuring
    assert mean["on"]["rate"] >= mean["off"]["rate"] - 0.03
    assert mean["on"]["p50"] <= mean["off"]["p50"] + 1.0
    assert mean["on"]["p99"] <= mean["off"]["p99"] + 5.0


