"""End-to-end runs of FMBench SageMaker and Bedrock configs through the plugin, the way users
run them, against moto's server (control plane) and the runtime emulator. Only environment
variables point boto3 there. Whatever a run deploys is gone afterwards, also after failing
cases and after Ctrl-C; an endpoint the user brought is never touched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pytest_fmbench.testing.aws_emulator import AwsRuntimeEmulator, aws_environment, moto_server
from tests.aws_support import ROLE, create_byo_endpoint, moto_inventory, read_jsonl, reset_moto
from tests.e2e_support import INNER_ARGS

REPO = Path(__file__).resolve().parents[1]
BYO = "team-llm-prod"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, AwsRuntimeEmulator]]:
    with moto_server() as moto, AwsRuntimeEmulator(ttft_s=0.004, token_delay_s=0.0005) as emulator:
        yield moto, emulator


@pytest.fixture
def aws(servers: tuple[str, AwsRuntimeEmulator], monkeypatch: pytest.MonkeyPatch,
        pytester: pytest.Pytester) -> Iterator[tuple[Any, AwsRuntimeEmulator]]:
    """Empty moto with one bring-your-own endpoint; env vars only, like a user's shell."""
    moto, emulator = servers
    reset_moto(moto)
    emulator.reset()
    for key, value in aws_environment(control_url=moto, runtime_url=emulator.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FMBENCH_ROLE_ARN", ROLE)
    sm = boto3.client("sagemaker")
    create_byo_endpoint(sm, BYO)
    shutil.copy(REPO / "benchmarks" / "test_fmbench.py", pytester.path / "test_fmbench.py")
    timing = emulator.ttft_s, emulator.token_delay_s
    yield sm, emulator
    emulator.ttft_s, emulator.token_delay_s = timing


def only_byo_left(sm: Any) -> None:
    assert moto_inventory(sm) == {"endpoints": [BYO], "configs": [BYO], "models": [BYO]}


def run(pytester: pytest.Pytester, config: str) -> pytest.RunResult:
    return pytester.runpytest(*INNER_ARGS, f"--fmbench-config={config}", "--fmbench-results-dir=out")


def test_fmbench_sagemaker_config_deploys_benchmarks_and_tears_down(
        pytester: pytest.Pytester, aws: tuple[Any, AwsRuntimeEmulator]) -> None:
    sm, emulator = aws
    shutil.copy(REPO / "configs" / "sagemaker-tgi.yml", pytester.path / "cfg.yml")
    result = run(pytester, "cfg.yml")
    result.assert_outcomes(passed=6)

    events = read_jsonl(pytester.path / "out" / "endpoints.jsonl")
    assert [(e["event"], e["ok"], e["deployed_by_us"]) for e in events] == [
        ("deploy", True, True), ("teardown", True, True)]
    name = events[0]["endpoint"]["endpoint_name"]
    assert name.startswith("qwen2-5-1-5b-g4dn-xl-")
    assert {r.target for r in emulator.requests} == {name}
    assert emulator.requests[0].body["parameters"] == {
        "max_new_tokens": 100, "top_p": 0.92, "temperature": 0.1, "details": True}

    records = read_jsonl(pytester.path / "out" / "records.jsonl")
    assert len(records) == len(emulator.requests) - 1  # all but the warm-up request
    assert {r["case_id"].rsplit("-", 1)[-1] for r in records} == {"c1", "c2", "c4"}
    for record in records:
        assert record["error"] == "" and record["status"] == 200
        assert record["first_token_ns"] > record["sent_ns"]  # TTFT from the stream
        assert record["token_source"] == "server" and record["completion_tokens"] == 16
        assert len(record["itl_us"]) == 15
    assert list((pytester.path / "out").glob("report*.md"))  # the run's report
    only_byo_left(sm)


def test_fmbench_bedrock_config_runs_with_ttft_usage_and_counted_retries(
        pytester: pytest.Pytester, aws: tuple[Any, AwsRuntimeEmulator]) -> None:
    sm, emulator = aws
    emulator.inject("throttle", times=2, target="anthropic.claude-3-haiku-20240307-v1:0")
    shutil.copy(REPO / "configs" / "bedrock.yml", pytester.path / "cfg.yml")
    result = run(pytester, "cfg.yml")
    result.assert_outcomes(passed=14)

    records = read_jsonl(pytester.path / "out" / "records.jsonl")
    assert {r["experiment"] for r in records} == {
        "anthropic.claude-3-haiku-20240307-v1:0", "us.amazon.nova-micro-v1:0",
        "meta.llama3-1-8b-instruct-v1:0"}
    assert all(r["error"] == "" and r["first_token_ns"] > r["sent_ns"] for r in records)
    assert all(r["token_source"] == "server" for r in records)
    # The two throttled attempts were retried (by the warm-up or a measured request).
    assert sum(r["retries"] for r in records) <= 2
    assert [q.fault for q in emulator.requests].count("throttle") == 2
    actions = {(q.target, q.action) for q in emulator.requests}
    assert ("us.meta.llama3-1-8b-instruct-v1:0", "invoke-with-response-stream") in actions
    assert ("us.amazon.nova-micro-v1:0", "converse-stream") in actions
    only_byo_left(sm)


BROUGHT_UNTYPED = """\
    general: {name: brought}
    aws: {region: us-east-1}
    datasets:
      synthetic: {records: 30, seed: 3}
      max_prompts_per_file: 2
      filters: [{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}]
    inference_parameters: {tgi: {max_new_tokens: 8}}
    load: {min_iters_per_combination: 1, max_iters_per_combination: 1, request_timeout_s: 5}
    experiments:
      - name: brought
        ep_name: EP_NAME
        deploy: no
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1]
    """


def test_a_brought_endpoint_is_priced_from_its_endpoint_config(
        pytester: pytest.Pytester, aws: tuple[Any, AwsRuntimeEmulator]) -> None:
    sm, _ = aws
    pytester.makefile(".yml", cfg=textwrap.dedent(BROUGHT_UNTYPED.replace("EP_NAME", BYO)))
    result = run(pytester, "cfg.yml")
    result.assert_outcomes(passed=1)
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    price = results["prices"]["brought"]
    # create_byo_endpoint: one ml.g4dn.xlarge; priced from the packaged table
    assert (price["key"], price["instance_count"]) == ("ml.g4dn.xlarge", 1)
    assert price["hourly"] > 0
    only_byo_left(sm)

    pytester.makefile(".yml", missing=textwrap.dedent(BROUGHT_UNTYPED.replace("EP_NAME", "no-such-ep")))
    missing = run(pytester, "missing.yml")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    error = missing.stderr.str()
    assert "SageMaker endpoint 'no-such-ep' not found in us-east-1" in error
    assert "ep_name" in error and "price_per_hour" in error and "Traceback" not in error


FAILING = """\
    general: {name: failing}
    aws: {region: us-east-1, sagemaker_execution_role: "{role_arn}"}
    datasets:
      synthetic: {records: 30, seed: 3}
      max_prompts_per_file: 3
      filters: [{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}]
    inference_parameters: {tgi: {max_new_tokens: 8}}
    load: {min_iters_per_combination: 2, max_iters_per_combination: 2, request_timeout_s: 5}
    experiments:
      - name: deployed
        model_id: Qwen/Qwen2.5-0.5B-Instruct
        ep_name: qwen-small
        instance_type: ml.g4dn.xlarge
        image_uri: 763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04
        deploy: yes
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        sagemaker: {poll_interval_s: 0.05}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1, 2]
      - name: no-g5-in-moto
        model_id: Qwen/Qwen2.5-0.5B-Instruct
        ep_name: qwen-g5
        instance_type: ml.g5.2xlarge
        image_uri: 763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04
        deploy: yes
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1]
      - name: brought
        ep_name: BYO_NAME
        deploy: no
        instance_type: ml.g4dn.xlarge
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1]
    """.replace("BYO_NAME", BYO)


def test_failing_cases_and_a_failed_deployment_leave_nothing_behind(
        pytester: pytest.Pytester, aws: tuple[Any, AwsRuntimeEmulator]) -> None:
    sm, emulator = aws
    emulator.inject("http_500", times=None, api="sagemaker")
    pytester.makefile(".yml", cfg=textwrap.dedent(FAILING))
    result = run(pytester, "cfg.yml")
    result.assert_outcomes(failed=3, errors=1)
    # moto rejects ml.g5 in create_endpoint_config: the model created before is deleted.
    result.stdout.fnmatch_lines(["*deploying 'no-g5-in-moto' failed*"])
    records = read_jsonl(pytester.path / "out" / "records.jsonl")
    assert records and {r["error"] for r in records} == {"http_5xx"}
    assert {r["experiment"] for r in records} == {"deployed", "brought"}
    only_byo_left(sm)


INTERRUPTED = """\
    general: {name: interrupted}
    aws: {region: us-east-1, sagemaker_execution_role: "{role_arn}"}
    datasets:
      synthetic: {records: 30, seed: 3}
      max_prompts_per_file: 3
      filters: [{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}]
    inference_parameters: {tgi: {max_new_tokens: 16}}
    load: {min_iters_per_combination: 20, max_iters_per_combination: 20, request_timeout_s: 30}
    experiments:
      - name: deployed
        model_id: Qwen/Qwen2.5-0.5B-Instruct
        ep_name: qwen-small
        instance_type: ml.g4dn.xlarge
        image_uri: 763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.3.1-gpu-py311-cu124-ubuntu22.04
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [2]
      - name: brought
        ep_name: BYO_NAME
        deploy: no
        instance_type: ml.g4dn.xlarge
        inference_script: sagemaker_predictor.py
        inference_spec: {parameter_set: tgi}
        payload_files: [payload_all.jsonl]
        concurrency_levels: [1]
    """.replace("BYO_NAME", BYO)


def test_ctrl_c_during_a_case_still_deletes_the_endpoint(
        pytester: pytest.Pytester, aws: tuple[Any, AwsRuntimeEmulator]) -> None:
    sm, emulator = aws
    emulator.ttft_s, emulator.token_delay_s = 0.05, 0.03  # ~0.5 s a request, 20 waves a case
    pytester.makefile(".yml", cfg=textwrap.dedent(INTERRUPTED))
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *INNER_ARGS, "--fmbench-config=cfg.yml",
         "--fmbench-results-dir=out", "-p", "no:timeout"],
        cwd=pytester.path, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 60
        # The warm-up request, then requests of the first case.
        while len(emulator.requests) < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert len(emulator.requests) >= 3, process.stdout.read() if process.stdout else ""
        deployed = [e for e in moto_inventory(sm)["endpoints"] if e != BYO]
        assert len(deployed) == 1 and deployed[0].startswith("qwen-small-")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    records = read_jsonl(pytester.path / "out" / "records.jsonl") if (
        pytester.path / "out" / "records.jsonl").exists() else []
    assert all(r["experiment"] == "deployed" for r in records)  # the second case never ran
    events = read_jsonl(pytester.path / "out" / "endpoints.jsonl")
    assert [(e["event"], e["ok"]) for e in events] == [("deploy", True), ("teardown", True)]
    only_byo_left(sm)
