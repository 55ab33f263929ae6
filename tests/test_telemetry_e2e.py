"""Telemetry end to end, run the way users run it: a vLLM-like server's /metrics in the report
and under a budget, SageMaker's CloudWatch metrics (moto) per case, and a run with no
telemetry source at all that is otherwise unchanged."""

from __future__ import annotations

import csv
import datetime
import json
import math
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from pytest_fmbench.testing.aws_emulator import AwsRuntimeEmulator, aws_environment, moto_server
from pytest_fmbench.testing.openai_server import FakeOpenAIServer
from pytest_fmbench.testing.prometheus_server import SlotServer
from tests.aws_support import ROLE, create_byo_endpoint, read_jsonl, reset_moto
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS

REPO = Path(__file__).resolve().parents[1]


def openai_config(url: str, telemetry: str = "", budgets: str = "") -> str:
    return textwrap.dedent(f"""\
        general: {{name: tele}}
        datasets:
          synthetic: {{records: 40, seed: 2}}
          max_prompts_per_file: 8
          filters:
            - {{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}
        inference_parameters: {{fast: {{max_new_tokens: 4}}}}
        load: {{min_iters_per_combination: 2, max_iters_per_combination: 2, warmup_requests: 0,
               request_timeout_s: 10}}
        experiments:
          - name: alpha
            backend: openai
            deploy: no
            openai: {{base_url: "{url}"}}
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_all.jsonl]
            concurrency_levels: [1, 6]
        """) + textwrap.dedent(telemetry) + textwrap.dedent(budgets)


def metrics_rows(out: Path) -> dict[int, dict[str, str]]:
    with open(out / "all_metrics.csv", newline="") as handle:
        return {int(row["concurrency"]): row for row in csv.DictReader(handle)}


def test_server_metrics_reach_the_report_plots_and_budgets(pytester: pytest.Pytester) -> None:
    """2 slots, c=6: the server's queue shows in telemetry.jsonl, the report, the timeline, and
    a budget on server_waiting_max fails exactly the case whose queue was over it."""
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    with SlotServer(slots=2, service_s=0.3, completion_tokens=4) as server:
        pytester.makefile(".yml", cfg=openai_config(
            server.url, "telemetry: {interval_s: 0.1, server_metrics: [vllm:num_preemptions]}\n",
            "budgets: {server_waiting_max: 2}\n"))
        result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out",
                                    "--fmbench-gate=every")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*server_waiting_max 4.00 requests > 2.00 requests*c=6*"])
    out = pytester.path / "out"
    lines = read_jsonl(out / "telemetry.jsonl")
    cases = [line for line in lines if line["kind"] == "case"]
    assert [c["concurrency"] for c in cases] == [1, 6]
    assert all("vLLM at " + server.url + "/metrics" in c["available"]["prometheus"] for c in cases)
    assert all(c["available"]["host"].startswith("psutil") for c in cases)  # a loopback server
    assert cases[0]["unavailable"]["cloudwatch"] == "not a SageMaker endpoint"
    scraped = [line for line in lines if line.get("source") == "prometheus"]
    assert max(line["values"]["waiting"] for line in scraped if line["concurrency"] == 6) == 4
    rows = metrics_rows(out)
    assert float(rows[6]["server_waiting_max"]) == 4 and float(rows[1]["server_waiting_max"]) == 0
    assert float(rows[6]["server_running_max"]) == 2 and float(rows[6]["kv_cache_usage_max"]) == 1
    assert float(rows[6]["host_cpu_percent_mean"]) >= 0
    report = (out / "report.md").read_text()
    assert "## Server and hardware telemetry" in report
    assert "- **server /metrics (Prometheus)**: vLLM at" in report
    assert "`vllm:num_preemptions`" in report  # the listed metric, mean / max per case
    assert "| waiting max |" in report
    assert "![Timeline of alpha" in report and "![Latency by prompt length" in report
    assert (out / "plots" / "timeline-alpha.png").stat().st_size > 10_000
    assert (out / "plots" / "latency_by_prompt_length.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    assert "server_waiting_max" in results["metric_definitions"]


BLOCKER = "raise ImportError('not installed here (test)')\n"


def test_without_any_telemetry_source_the_run_is_unchanged_and_the_report_says_why(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without /metrics, psutil and nvidia-ml-py not importable, no neuron-monitor, not
    SageMaker: the same outcome and records as with telemetry off, every source named."""
    blockers = pytester.path / "blockers"
    blockers.mkdir()
    (blockers / "psutil.py").write_text(BLOCKER)
    (blockers / "pynvml.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", f"{blockers}:{REPO}")  # seen by the sampler process only
    monkeypatch.setenv("PATH", str(Path(shutil.which("python3") or "/usr/bin/python3").parent))
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    with FakeOpenAIServer() as server:
        pytester.makefile(".yml", on=openai_config(server.url),
                          off=openai_config(server.url, "telemetry: {enabled: false}\n"))
        with_sources = pytester.runpytest(*INNER_ARGS, "--fmbench-config=on.yml", "--fmbench-results-dir=on")
        without = pytester.runpytest(*INNER_ARGS, "--fmbench-config=off.yml", "--fmbench-results-dir=off")
    with_sources.assert_outcomes(passed=2)
    without.assert_outcomes(passed=2)
    on, off = pytester.path / "on", pytester.path / "off"
    assert len(read_jsonl(on / "records.jsonl")) == len(read_jsonl(off / "records.jsonl")) == 14
    assert not [line for line in read_jsonl(on / "telemetry.jsonl") if line["kind"] == "sample"]
    row = metrics_rows(on)[6]
    assert all(row[name] == "" for name in ("server_waiting_max", "host_cpu_percent_mean",
                                            "gpu_utilization_mean", "sagemaker_invocations"))
    report = (on / "report.md").read_text()
    assert f"- unavailable: **server /metrics (Prometheus)**: {server.url}/metrics answered HTTP 404" in report
    assert "- unavailable: **host CPU and memory (psutil)**: psutil is not installed" in report
    assert "- unavailable: **NVIDIA GPUs (NVML)**: nvidia-ml-py is not installed" in report
    assert "- unavailable: **Neuron devices (neuron-monitor)**: neuron-monitor is not on PATH" in report
    assert "- unavailable: **SageMaker CloudWatch**: not a SageMaker endpoint" in report
    assert "- unavailable: **telemetry**: off (telemetry.enabled: false)" in (off / "report.md").read_text()


SAGEMAKER = """\
    general: {name: sm-telemetry}
    aws: {region: us-east-1}
    datasets:
      synthetic: {records: 30, seed: 3}
      max_prompts_per_file: 2
      filters: [{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}]
    inference_parameters: {tgi: {max_new_tokens: 8}}
    load: {min_iters_per_combination: 1, max_iters_per_combination: 1, request_timeout_s: 5}
    experiments:
      - name: brought
        ep_name: team-llm-prod
        deploy: no
        instance_type: ml.g4dn.xlarge
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1, 2]
    """


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, AwsRuntimeEmulator]]:
    with moto_server() as moto, AwsRuntimeEmulator(ttft_s=0.004, token_delay_s=0.0005) as emulator:
        reset_moto(moto)
        for key, value in aws_environment(control_url=moto, runtime_url=emulator.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FMBENCH_ROLE_ARN", ROLE)
        yield moto, emulator


def put_endpoint_metrics(name: str) -> None:
    """What SageMaker would publish for the endpoint, a minute apart around now."""
    cloudwatch = boto3.client("cloudwatch")
    dimensions = [{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"}]
    now = datetime.datetime.now(datetime.UTC)
    for minute in range(-3, 4):
        at = now + datetime.timedelta(minutes=minute)
        cloudwatch.put_metric_data(Namespace="/aws/sagemaker/Endpoints", MetricData=[
            {"MetricName": metric, "Dimensions": dimensions, "Timestamp": at, "Value": value, "Unit": "Percent"}
            for metric, value in (("CPUUtilization", 155.0), ("MemoryUtilization", 41.0),
                                  ("GPUUtilization", 87.0), ("GPUMemoryUtilization", 63.0),
                                  ("DiskUtilization", 12.0))])
        cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
            {"MetricName": "Invocations", "Dimensions": dimensions, "Timestamp": at, "Value": 30.0},
            {"MetricName": "ModelLatency", "Dimensions": dimensions, "Timestamp": at,
             "Value": 420_000.0, "Unit": "Microseconds"},
            {"MetricName": "OverheadLatency", "Dimensions": dimensions, "Timestamp": at,
             "Value": 9_000.0, "Unit": "Microseconds"}])


def test_a_sagemaker_endpoint_s_cloudwatch_metrics_show_per_case(
        pytester: pytest.Pytester, aws: tuple[str, AwsRuntimeEmulator]) -> None:
    create_byo_endpoint(boto3.client("sagemaker"), "team-llm-prod")
    put_endpoint_metrics("team-llm-prod")
    shutil.copy(REPO / "benchmarks" / "test_fmbench.py", pytester.path / "test_fmbench.py")
    pytester.makefile(".yml", cfg=textwrap.dedent(SAGEMAKER))
    result = pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    result.assert_outcomes(passed=2)
    out = pytester.path / "out"
    cases = [line for line in read_jsonl(out / "telemetry.jsonl") if line["kind"] == "case"]
    assert len(cases) == 2
    for case in cases:
        assert "endpoint team-llm-prod variant AllTraffic" in case["available"]["cloudwatch"]
        assert "60-second granularity" in case["available"]["cloudwatch"]
        assert case["unavailable"]["host"] == "the endpoint is not served by this machine"
    rows = metrics_rows(out)
    for level in (1, 2):
        assert float(rows[level]["sagemaker_cpu_utilization_mean"]) == 155
        assert float(rows[level]["sagemaker_gpu_memory_utilization_max"]) == 63
        assert math.isclose(float(rows[level]["sagemaker_model_latency_mean"]), 0.42)
        assert float(rows[level]["sagemaker_invocations"]) >= 30
    report = (out / "report.md").read_text()
    assert "- **SageMaker CloudWatch**: endpoint team-llm-prod variant AllTraffic" in report
    assert "CloudWatch metrics have a 1-minute granularity" in report
    table = report.split("## Server and hardware telemetry", 1)[1].split("\n## ", 1)[0]
    assert "SM CPU % mean" in table and "SM model latency s" in table
    body = [line for line in table.splitlines() if line.startswith("| brought")]
    assert len(body) == 2 and all("155.0" in line and "0.42" in line for line in body)


