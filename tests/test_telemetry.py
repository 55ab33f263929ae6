"""Telemetry beside each case: the /metrics mapping, host sources, CloudWatch, aggregates,
and a scraped series checked against the server's own queue.

The end-to-end runs (report, telemetry.jsonl, budgets, SageMaker with moto's CloudWatch, no
source present) are in test_telemetry_e2e.py.
"""

from __future__ import annotations

import datetime
import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.config.model import Config
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.engine import RecordContext, run_load
from pytest_fmbench.load.patterns import LoadPlan
from pytest_fmbench.telemetry import cloudwatch, host, prometheus
from pytest_fmbench.telemetry.aggregate import case_aggregates, counter_delta
from pytest_fmbench.telemetry.sampler import TelemetryRecorder, read_telemetry
from pytest_fmbench.testing.prometheus_server import SlotServer

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.75
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 2.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="m"} 40.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="m"} 100.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 1000.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} 4.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 5.0
vllm:e2e_request_latency_seconds_count{model_name="m"} 5.0
vllm:e2e_request_latency_seconds_sum{model_name="m"} 3.5
"""
SGLANG_TEXT = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.28
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="m"} 0.5
# TYPE sglang:generation_tokens counter
sglang:generation_tokens_total{model_name="m"} 10.0
"""
TGI_TEXT = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 3
tgi_request_generated_tokens_sum 300
tgi_request_generated_tokens_count 3
"""


@pytest.mark.parametrize(("text", "engine", "expected"), [
    (VLLM_TEXT, "vLLM", {"running": 3, "waiting": 5, "kv_cache_usage": 0.75, "batch_size": 3,
                         "preemptions": 2, "prefix_cache_hits": 40, "prefix_cache_queries": 100,
                         "generation_tokens": 1000}),
    (SGLANG_TEXT, "SGLang", {"running": 7, "waiting": 2, "kv_cache_usage": 0.28, "batch_size": 7,
                             "prefix_cache_hit_rate": 0.5, "generation_tokens": 10}),
    (TGI_TEXT, "TGI", {"running": 6, "waiting": 4, "batch_size": 6, "generation_tokens": 300}),
])
def test_each_engine_s_metric_names_map_onto_our_signals(text: str, engine: str,
                                                          expected: dict[str, float]) -> None:
    values = prometheus.samples_of(text)
    assert prometheus.engine_of(values) == engine
    assert prometheus.signals_from(values) == expected


def test_a_listed_metric_is_recorded_under_its_own_name_and_label_sets_are_summed() -> None:
    text = VLLM_TEXT + 'my_gauge{gpu="0"} 1.5\nmy_gauge{gpu="1"} 2.5\n'
    values = prometheus.signals_from(prometheus.samples_of(text),
                                     ["my_gauge", "vllm:e2e_request_latency_seconds", "absent"])
    assert values["metric:my_gauge"] == 4.0
    assert values["metric:vllm:e2e_request_latency_seconds"] == 3.5  # a histogram: its _sum
    assert "metric:absent" not in values


def _sample(t: float, source: str, **values: float) -> dict[str, Any]:
    return {"t_ns": int(t * 1e9), "source": source, "values": values}


def test_aggregates_take_gauges_mean_and_max_and_counters_delta() -> None:
    samples = [
        _sample(0, "prometheus", running=2, waiting=0, kv_cache_usage=0.2, preemptions=5,
                prefix_cache_hits=10, prefix_cache_queries=20, generation_tokens=100),
        _sample(1, "prometheus", running=4, waiting=3, kv_cache_usage=0.6, preemptions=6,
                prefix_cache_hits=40, prefix_cache_queries=80, generation_tokens=300),
        _sample(2, "prometheus", running=4, waiting=6, kv_cache_usage=0.7, preemptions=8,
                prefix_cache_hits=50, prefix_cache_queries=120, generation_tokens=500),
        _sample(0.5, "host", host_cpu_percent=50, host_memory_percent=40),
        _sample(1.5, "host", host_cpu_percent=70, host_memory_percent=45),
        _sample(1.0, "nvml", gpu_utilization=80, gpu_memory_percent=60),
    ]
    found = case_aggregates(samples)
    assert found["server_running_mean"] == pytest.approx(10 / 3)
    assert found["server_waiting_max"] == 6
    assert found["kv_cache_usage_max"] == 0.7
    assert found["server_preemptions"] == 3
    assert found["prefix_cache_hit_rate"] == pytest.approx(40 / 100)
    assert found["server_generation_throughput"] == pytest.approx(400 / 2)
    assert found["host_cpu_percent_mean"] == 60
    assert found["host_memory_percent_max"] == 45
    assert found["gpu_utilization_mean"] == 80
    assert "neuron_utilization_mean" not in found
    # A server restart resets a counter: what came after counts from zero.
    assert counter_delta([(0, 100.0), (1, 120.0), (2, 5.0), (3, 15.0)]) == 20 + 5 + 10


class FakePynvml(types.ModuleType):
    """pynvml's calls used by NvmlSource, for two GPUs (no NVIDIA driver here)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.shutdown = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=[30, 90][handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(total=100, used=[25, 75][handle], free=0)


def test_nvml_gpus_are_sampled_through_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = host.NvmlSource()
    values = source.sample()
    source.close()
    assert values["gpu_utilization"] == 60 and values["gpu1_utilization"] == 90
    assert values["gpu_memory_percent"] == 50 and values["gpu0_memory_percent"] == 25
    assert fake.shutdown


def test_without_pynvml_or_neuron_monitor_those_sources_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setenv("PATH", "/nonexistent")
    sources, missing = host.open_host_sources(1.0)
    assert [s.name for s in sources] == ["host"]  # psutil: CPU and memory
    assert "nvidia-ml-py is not installed" in missing["nvml"]
    assert "neuron-monitor is not on PATH" in missing["neuron"]
    assert set(sources[0].sample()) == {"host_cpu_percent", "host_memory_percent"}


def test_neuron_monitor_reports_give_the_mean_neuroncore_utilization(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"neuron_runtime_data": [{"pid": 1, "report": {"neuroncore_counters": {
        "period": 1.0, "neuroncores_in_use": {"0": {"neuroncore_utilization": 20.0},
                                              "1": {"neuroncore_utilization": 60.0}}}}}]}
    assert host.neuron_utilization(report) == {"neuron_utilization": 40.0}
    # A stand-in neuron-monitor on PATH: one JSON report per line, as the real one streams.
    tool = tmp_path / "neuron-monitor"
    tool.write_text(f"#!/bin/sh\necho '{json.dumps(report)}'\nsleep 30\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sources, _ = host.open_host_sources(1.0)
    neuron = next(s for s in sources if s.name == "neuron")
    try:
        for _ in range(100):
            values = neuron.sample()
            if values:
                break
            __import__("time").sleep(0.05)
        assert values == {"neuron_utilization": 40.0}
    finally:
        for source in sources:
            source.close()


def test_cloudwatch_window_is_whole_minutes_and_queries_both_namespaces() -> None:
    start = datetime.datetime(2026, 1, 1, 10, 0, 15, tzinfo=datetime.UTC)
    end = datetime.datetime(2026, 1, 1, 10, 1, 5, tzinfo=datetime.UTC)
    first, last = cloudwatch.window(int(start.timestamp() * 1e9), int(end.timestamp() * 1e9))
    assert (first.minute, first.second, last.minute, last.second) == (0, 0, 2, 0)
    queries = cloudwatch.queries(cloudwatch.CloudWatchTarget("ep", "AllTraffic"))
    namespaces = {q["MetricStat"]["Metric"]["Namespace"] for q in queries}
    assert namespaces == {"/aws/sagemaker/Endpoints", "AWS/SageMaker"}
    assert all(q["MetricStat"]["Period"] == 60 for q in queries)
    found = cloudwatch.aggregates([
        {"values": {"CPUUtilization:Average": 50.0, "CPUUtilization:Maximum": 80.0,
                    "Invocations:Sum": 10.0, "ModelLatency:Average": 200_000.0}},
        {"values": {"CPUUtilization:Average": 70.0, "CPUUtilization:Maximum": 95.0,
                    "Invocations:Sum": 5.0, "ModelLatency:Average": 400_000.0}}])
    assert found == {"sagemaker_cpu_utilization_mean": 60.0, "sagemaker_cpu_utilization_max": 95.0,
                     "sagemaker_invocations": 15.0,
                     "sagemaker_model_latency_mean": pytest.approx(0.3)}


def _config(url: str, interval: float, extra: str = "") -> Config:
    import yaml

    return Config.model_validate(yaml.safe_load(textwrap.dedent(f"""\
        experiments:
          - name: q
            backend: openai
            deploy: no
            openai: {{base_url: "{url}"}}
            payload_files: [p.jsonl]
            concurrency_levels: [12]
        telemetry: {{interval_s: {interval}{extra}}}
        """)))


class Endpoint:
    """Just enough of an endpoint for the recorder: its /metrics URL, on this host."""

    name = "q"
    deployed_by_us = False

    def __init__(self, url: str) -> None:
        self.url = url

    def deploy(self) -> None: ...

    def teardown(self) -> None: ...

    def client(self) -> Any:
        return OpenAIClient(self.url, api="completions", model="m", stream=True, timeout_s=30)

    def describe(self) -> dict[str, Any]:
        return {}

    def metrics_url(self) -> str | None:
        return f"{self.url}/metrics"

    def runs_on_this_host(self) -> bool:
        return True


def test_scraped_running_and_waiting_follow_the_server_s_true_queue(tmp_path: Path) -> None:
    """A server with 3 slots and a queue: every scrape matches the counts the server itself had
    within one scrape interval, and the queue really formed (waiting up to 9)."""
    interval = 0.1
    with SlotServer(slots=3, service_s=0.4, completion_tokens=4) as server:
        recorder = TelemetryRecorder(_config(server.url, interval), tmp_path, run_id="r")
        endpoint = Endpoint(server.url)
        keys = {"case_id": "q-p-c12", "experiment": "q", "payload_file": "p.jsonl", "concurrency": 12}
        case = recorder.begin(keys, endpoint)  # type: ignore[arg-type]
        assert "prometheus" in case.available, case.unavailable
        plan = LoadPlan(pattern="waves", concurrency=12, waves=2, timeout_s=30)
        records: list[Any] = []
        run_load(plan, endpoint.client, [InferenceRequest("hello there", {"max_new_tokens": 4}, 2)] * 12,
                 RecordContext("r", "q", "p.jsonl", 12, "q-p-c12"), records.append)
        aggregates = recorder.end(case)
        recorder.close()
    assert len(records) == 24 and all(r.ok for r in records)
    scraped = [s for s in case.samples if s["source"] == "prometheus"]
    assert len(scraped) >= 15  # 2 waves of 4 rounds x 0.4 s = 3.2 s at 0.1 s
    window = int(interval * 1e9)
    exact = 0
    for sample in scraped:
        values = sample["values"]
        seen = (int(values["running"]), int(values["waiting"]))
        assert seen in server.states_between(sample["t_ns"] - window, sample["t_ns"] + window), sample
        half = int(sample["scrape_ms"] * 1e6 / 2) + 1_000_000
        exact += seen in server.states_between(sample["t_ns"] - half, sample["t_ns"] + half)
    assert exact >= len(scraped) * 0.9  # nearly all within the scrape's own round trip
    assert aggregates["server_waiting_max"] == 9 and aggregates["server_running_max"] == 3
    assert aggregates["kv_cache_usage_max"] == 1.0
    assert aggregates["server_generation_throughput"] > 0
    lines = read_telemetry(tmp_path)
    assert lines[0]["kind"] == "case" and lines[0]["case_id"] == "q-p-c12"
    assert sum(1 for line in lines if line.get("source") == "prometheus") == len(scraped)


def test_rate_levels_of_one_experiment_keep_their_own_telemetry() -> None:
    """Every rate level of an experiment shares its in-flight cap (its ``concurrency``): the
    level keeps their samples apart."""
    import pandas as pd

    from pytest_fmbench.telemetry.report import add_telemetry

    def line(level: str, waiting: int) -> dict[str, Any]:
        return {**_sample(0, "prometheus", waiting=waiting), "kind": "sample", "experiment": "e",
                "payload_file": "p.jsonl", "concurrency": 1024, "level": level}

    metrics = pd.DataFrame({"experiment": ["e", "e"], "payload_file": ["p.jsonl", "p.jsonl"],
                            "concurrency": [1024, 1024], "level": ["r2", "r8"]})
    out = add_telemetry(metrics, [line("r2", 1), line("r8", 9)])
    assert out["server_waiting_max"].tolist() == [1, 9]
