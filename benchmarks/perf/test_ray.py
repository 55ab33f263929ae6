"""load.executor: ray at concurrency 256 against the 50 ms streaming server (not in tests/).

    pytest benchmarks/perf/test_ray.py -s

A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one CPU each), one
actor per node (strict spread), closed loop at c=256 for 3 s after 0.5 s of warm-up. Target
(issue 15): >= 90 % of the ideal request rate (c / 50 ms). Prints the achieved rate, the
clock offsets recorded and the machine load; asserts nothing (timings on a shared machine).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.perf.test_client import DELAY_S, BenchServer, load, report, span_s
from pytest_fmbench.config.model import RaySettings
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.records import RequestRecord

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    nodes = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    nodes.add_node(**node)
    ray.init(address=nodes.address, logging_level="warning", log_to_driver=False)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def delayed() -> Iterator[BenchServer]:
    server = BenchServer(DELAY_S)
    yield server
    server.stop()


def test_ray_c256(cluster: object, delayed: BenchServer) -> None:
    concurrency = 256
    plan = LoadPlan("concurrency", concurrency, duration_s=3.0, warmup_s=0.5, timeout_s=60,
                    executor="ray", ray=RaySettings(placement="strict_spread"))
    prompts = [InferenceRequest(f"<id:{i}>", {"max_new_tokens": 16}, 8) for i in range(50_000)]
    records: list[RequestRecord] = []
    lines: list[str] = []
    run_load(plan, lambda: OpenAIClient(delayed.url, timeout_s=60, keep_text=False), prompts,
             RecordContext("perf", "perf", "p", concurrency, "perf-ray"), records.append,
             log=lines.append)
    ok = [r for r in records if r.ok]
    rate = len(ok) / span_s(ok)
    ideal = concurrency / DELAY_S
    offsets = sorted({(r.clock_offset_ns, r.clock_uncertainty_ns) for r in records})
    report(f"ray, 2 nodes x 1 actor, fixed {DELAY_S * 1000:.0f} ms, c={concurrency}: {len(ok)} req "
           f"{len(records) - len(ok)} err: {rate:.0f} req/s = {rate / ideal:.1%} of ideal {ideal:.0f}"
           f"{'  MEETS' if rate / ideal >= 0.9 else '  MISSES'} target 90 %; clock offsets "
           + ", ".join(f"{o / 1e6:+.3f} ± {u / 1e6:.3f} ms" for o, u in offsets) + f"  [{load()}]")
    for line in lines:
        print(line)
