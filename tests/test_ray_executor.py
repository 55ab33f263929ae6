"""load.executor: ray: the clock estimator, the actor split, and (with the ``ray`` extra) a
two-node Ray cluster on loopback: records merged, clock offsets recorded, a lost actor."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from pytest_fmbench.clock import SKEW_ENV, now_ns
from pytest_fmbench.config.model import RaySettings
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.errors import EndpointError
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.load.ray_executor import (
    MIN_START_MARGIN_NS,
    ClockOffset,
    actor_count,
    estimate_offset,
    start_margin_ns,
    to_driver_timeline,
)
from pytest_fmbench.load.records import RequestRecord
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour

# -- without Ray ------------------------------------------------------------------------------

def test_the_estimator_recovers_a_known_skew_within_its_uncertainty() -> None:
    rng = random.Random(7)
    skew = 3_217_000_123  # the actor's clock is 3.2 s ahead
    samples = []
    for _ in range(32):
        t0 = rng.randrange(10**12)
        out, back = rng.randrange(50_000, 5_000_000), rng.randrange(50_000, 5_000_000)  # asymmetric
        samples.append((t0, t0 + out + skew, t0 + out + back))
    clock = estimate_offset(samples)
    best = min(samples, key=lambda s: s[2] - s[0])
    assert clock.rtt_ns == best[2] - best[0] and clock.uncertainty_ns * 2 >= clock.rtt_ns
    assert abs(clock.offset_ns - skew) <= clock.uncertainty_ns
    with pytest.raises(ValueError):
        estimate_offset([])


def test_start_margin_covers_ten_round_trips_and_at_least_250_ms() -> None:
    assert start_margin_ns([ClockOffset(0, 500, 1000)]) == MIN_START_MARGIN_NS
    assert start_margin_ns([ClockOffset(0, 1, 2), ClockOffset(0, 0, 40_000_000)]) == 400_000_000


def test_records_move_onto_the_driver_timeline_and_say_by_how_much() -> None:
    record = RequestRecord("r", "e", "p", 1, "c", 0, scheduled_ns=1_000, sent_ns=1_100,
                           last_byte_ns=2_000, first_token_ns=1_500)
    moved = to_driver_timeline(record, ClockOffset(300, 7, 14))
    assert (moved.scheduled_ns, moved.sent_ns, moved.first_token_ns, moved.last_byte_ns) == (700, 800, 1_200, 1_700)
    assert moved.first_reasoning_ns is None
    assert (moved.clock_offset_ns, moved.clock_uncertainty_ns) == (300, 7)
    assert moved.latency_s == 900 / 1e9  # durations untouched


def test_actor_count_per_node_per_cpu_or_given() -> None:
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0, "fmbench_loadgen": 1.0}},
             {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 8.0, "fmbench_loadgen": 1.0}}]
    assert actor_count("per_node", nodes, {}) == 2
    assert actor_count("per_cpu", nodes, {}) == 6
    assert actor_count("per_node", nodes, {"fmbench_loadgen": 1}) == 1
    assert actor_count("per_cpu", nodes, {"fmbench_loadgen": 1}) == 4
    assert actor_count(5, nodes, {}) == 5


def test_without_the_extra_nothing_ray_is_imported() -> None:
    """A whole local load (and the plugin) runs without importing ray."""
    code = (
        "import sys\n"
        "import pytest_fmbench.plugin, pytest_fmbench.load.engine, pytest_fmbench.run\n"
        "from pytest_fmbench.config.model import LoadSettings\n"
        "from pytest_fmbench.load.engine import plan_load\n"
        "plan = plan_load(LoadSettings(pattern='concurrency', requests=4).merged(None), 2, 4)\n"
        "assert plan.executor == 'local' and plan.ray is None\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
        "print('clean')\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr


def test_waves_and_processes_do_not_combine_with_ray() -> None:
    from pytest_fmbench.config.model import LoadSettings

    assert ("executor" in dict(LoadSettings(pattern="waves", executor="ray").merged(None).problems()))
    problems = dict(LoadSettings(pattern="rate", rate=5, executor="ray", processes=2).merged(None).problems())
    assert "load.ray.actors" in problems["processes"]


# -- a two-node Ray cluster on loopback -----------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Both nodes on this machine. (node_ip_address="127.0.0.1" keeps Ray 2.60's head from
    # starting here: its GCS client dials the host address; traffic stays on this host.)
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    nodes = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    nodes.add_node(**node)
    ray.init(address=nodes.address, logging_level="warning", log_to_driver=False)
    try:
        nodes.wait_for_nodes()
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.01, token_delay_s=0.005)) as running:
        yield running


def ray_load(server: FakeOpenAIServer, plan: LoadPlan, log: list[str]) -> tuple[list[RequestRecord], int, int]:
    records: list[RequestRecord] = []
    before = now_ns()
    try:
        run_load(plan, lambda: OpenAIClient(server.url, timeout_s=10),
                 [InferenceRequest(f"prompt {i}", {"max_new_tokens": 4}, 4) for i in range(8)],
                 RecordContext("run", "exp", "p.jsonl", plan.concurrency, "case", host="driver-host"),
                 records.append, log=log.append)
    finally:
        after = now_ns()
    return records, before, after


def test_two_ray_nodes_share_one_case_with_clock_offsets_recorded(cluster: object,
                                                                  server: FakeOpenAIServer) -> None:
    skew = 2_500_000_000  # the actors' clocks run 2.5 s ahead of the driver's
    settings = RaySettings(placement="strict_spread", runtime_env={"env_vars": {SKEW_ENV: str(skew)}})
    plan = LoadPlan("concurrency", 4, requests=40, timeout_s=10, executor="ray", ray=settings)
    log: list[str] = []
    records, before, after = ray_load(server, plan, log)
    assert len(records) == 40 and all(r.ok for r in records)
    assert any("2 Ray load actor(s) on 2 node(s)" in line for line in log), log
    # Each actor ran its round-robin share: request ids split by parity, 20 each.
    per_actor = Counter((r.clock_anchor_ns, r.request_id % 2) for r in records)
    assert sorted(per_actor.values()) == [20, 20] and len({a for a, _ in per_actor}) == 2
    for record in records:
        # The measured offset is the injected skew, within the recorded uncertainty ...
        assert abs(record.clock_offset_ns - skew) <= record.clock_uncertainty_ns
        assert 0 < record.clock_uncertainty_ns < 1_000_000_000
        # ... and undone: every timestamp lies on the driver's timeline, inside the case.
        assert before <= record.scheduled_ns <= record.sent_ns < record.last_byte_ns <= after
        assert record.host and record.host != "driver-host"


def test_a_lost_ray_actor_loses_only_its_own_share(cluster: object, server: FakeOpenAIServer) -> None:
    settings = RaySettings(placement="strict_spread")
    # 2 actors, 1 request in flight each, 50 requests each of >= 30 ms: about 1.5 s of load.
    plan = LoadPlan("concurrency", 2, requests=100, timeout_s=10, executor="ray", ray=settings)
    log: list[str] = []

    def kill_second_actor() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            placed = [line for line in log if "Ray load actor(s)" in line]
            if placed:
                time.sleep(0.9)  # the case is under way
                pid = int(re.search(r"\b1: \S+ pid (\d+)", placed[0]).group(1))  # type: ignore[union-attr]
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_second_actor, daemon=True)
    killer.start()
    records: list[RequestRecord] = []
    with pytest.raises(EndpointError, match="ray load actor 1 .* was lost") as failure:
        run_load(plan, lambda: OpenAIClient(server.url, timeout_s=10),
                 [InferenceRequest(f"prompt {i}", {"max_new_tokens": 4}, 4) for i in range(8)],
                 RecordContext("run", "exp", "p.jsonl", 2, "case"), records.append, log=log.append)
    killer.join(5)
    assert "in-flight and unsent requests are lost" in str(failure.value)
    by_share = Counter(r.request_id % 2 for r in records)
    assert by_share[0] == 50  # the surviving actor's whole share
    assert 0 < by_share[1] < 50  # the lost one's: what it finished before the kill
    assert all(r.ok for r in records)
