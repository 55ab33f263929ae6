"""load.processes: auto: the count chosen from a probe's measured client saturation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_fmbench.config.model import LoadSettings
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.autoscale import choose_processes, is_saturated, next_count, process_cap
from pytest_fmbench.load.driver import LoadStats, RecordContext
from pytest_fmbench.load.engine import plan_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour


def test_saturation_decides_and_counts_double_up_to_the_cap() -> None:
    assert not is_saturated(LoadStats(recorded=100, saturated=2, max_loop_lag_us=9_000), 10.0)
    assert is_saturated(LoadStats(recorded=100, saturated=3), 10.0)
    assert is_saturated(LoadStats(recorded=100, max_loop_lag_us=10_001), 10.0)
    assert [next_count(1, True, 8), next_count(4, True, 8), next_count(8, True, 8)] == [2, 8, None]
    assert next_count(1, False, 8) is None and next_count(4, True, 6) == 6
    assert process_cap(LoadPlan("concurrency", 3), 16) == 3
    assert process_cap(LoadPlan("rate", 3, rate=10), 16) == 16


def test_auto_is_accepted_for_open_and_closed_loops_not_waves() -> None:
    plan = plan_load(LoadSettings(pattern="concurrency", processes="auto", requests=4).merged(None), 2, 4)
    assert plan.auto_processes and plan.processes == 1
    assert "processes" in dict(LoadSettings(pattern="waves", processes="auto").merged(None).problems())
    with pytest.raises(ValueError):
        LoadSettings(processes="many")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as running:
        yield running


def choose(server: FakeOpenAIServer, saturation_ms: float, log: list[str]) -> LoadPlan:
    plan = LoadPlan("concurrency", 4, requests=20, timeout_s=5, saturation_ms=saturation_ms,
                    auto_processes=True)
    return choose_processes(plan, lambda: OpenAIClient(server.url, timeout_s=5),
                            [InferenceRequest("hi", {"max_new_tokens": 2}, 1)],
                            RecordContext("r", "e", "p", 4, "case"), log=log.append, cpus=2,
                            probe_s=0.3)


def test_an_unsaturated_probe_keeps_one_process(server: FakeOpenAIServer) -> None:
    log: list[str] = []
    plan = choose(server, saturation_ms=10_000.0, log=log)
    assert plan.processes == 1 and not plan.auto_processes and plan.requests == 20
    assert "load.processes auto -> 1" in log[0] and "1: 0% saturated" in log[0]


def test_a_saturated_probe_adds_processes_up_to_the_cpus(server: FakeOpenAIServer) -> None:
    log: list[str] = []
    # A threshold no client meets: every probe is saturated, so the count reaches the cap.
    plan = choose(server, saturation_ms=0.000001, log=log)
    assert plan.processes == 2
    assert "load.processes auto -> 2" in log[0] and "1: " in log[0] and "2: " in log[0]
