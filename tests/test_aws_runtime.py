"""The SageMaker and Bedrock clients against the runtime emulator, through real botocore.

Event-stream decoding is botocore's own; these tests check what our clients make of it:
TTFT and ITL from the stream, token counts, and one error class per injected fault while
the other requests of the wave are measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from botocore.eventstream import EventStreamBuffer

from pytest_fmbench.endpoints.bedrock import BedrockEndpoint
from pytest_fmbench.endpoints.sagemaker import SageMakerEndpoint
from pytest_fmbench.testing.aws_emulator import (
    AwsRuntimeEmulator,
    aws_environment,
    encode_event_message,
)
from tests.aws_support import bench_config, context, invoke_all, request

TTFT_S = 0.03
TOKEN_S = 0.004


@pytest.fixture(scope="module")
def emulator() -> Iterator[AwsRuntimeEmulator]:
    with AwsRuntimeEmulator(ttft_s=TTFT_S, token_delay_s=TOKEN_S, output_tokens=16) as running:
        yield running


@pytest.fixture(autouse=True)
def aws_env(emulator: AwsRuntimeEmulator, monkeypatch: pytest.MonkeyPatch) -> AwsRuntimeEmulator:
    for key, value in aws_environment(runtime_url=emulator.url).items():
        monkeypatch.setenv(key, value)
    emulator.reset()
    emulator.sagemaker_styles.clear()
    return emulator


def sagemaker(fmt: str = "tgi", *, stream: bool = True, parameter_set: str = "tgi",
              timeout_s: float = 5.0, retry: dict | None = None, count_tokens=None,
              ep_name: str = "byo-endpoint") -> SageMakerEndpoint:
    config = bench_config({
        "name": "sm", "backend": "sagemaker", "deploy": False, "ep_name": ep_name,
        "inference_spec": {"parameter_set": parameter_set, "stream": stream},
        "sagemaker": {"payload_format": fmt, "retry": retry or {}},
    }, timeout_s=timeout_s)
    return SageMakerEndpoint(config, config.experiments[0], context(count_tokens=count_tokens))


def bedrock(model: str = "anthropic.claude-3-haiku-20240307-v1:0", *, api: str = "converse",
            stream: bool = True, timeout_s: float = 5.0, retry: dict | None = None) -> BedrockEndpoint:
    config = bench_config({
        "name": "br", "backend": "bedrock", "ep_name": model,
        "inference_spec": {"parameter_set": "bedrock", "stream": stream},
        "bedrock": {"api": api, "retry": {"max_retries": 0} if retry is None else retry},
    }, timeout_s=timeout_s)
    return BedrockEndpoint(config, config.experiments[0], context())


def params(endpoint) -> dict:
    return endpoint.config.parameters_for(endpoint.experiment)


# --- event-stream framing ----------------------------------------------------------------

def test_encoded_frames_decode_with_botocores_parser() -> None:
    frame = encode_event_message({":message-type": "event", ":event-type": "PayloadPart",
                                  ":content-type": "application/octet-stream"}, b"data:{}\n")
    buffer = EventStreamBuffer()
    buffer.add_data(frame[:7])
    assert list(buffer) == []  # incomplete frames wait for the rest
    buffer.add_data(frame[7:] + frame)
    messages = list(buffer)
    assert [m.payload for m in messages] == [b"data:{}\n"] * 2
    assert messages[0].headers[":event-type"] == "PayloadPart"


# --- SageMaker: formats through the real client ------------------------------------------

@pytest.mark.parametrize("fmt", ["tgi", "lmi", "messages"])
def test_sagemaker_stream_gives_ttft_itl_and_server_tokens(fmt: str,
                                                          aws_env: AwsRuntimeEmulator) -> None:
    aws_env.sagemaker_styles["byo-endpoint"] = "lmi" if fmt == "lmi" else "tgi"
    endpoint = sagemaker(fmt)
    results = invoke_all(endpoint, [request(params(endpoint))] * 4)
    for r in results:
        assert r.error == "", r.error_detail
        assert r.status == 200
        assert TTFT_S * 0.9 <= (r.first_token_ns - r.sent_ns) / 1e9 < TTFT_S + 0.5
        assert r.last_byte_ns > r.first_token_ns
        assert len(r.itl_us) == 7 and min(r.itl_us) > 0  # 8 tokens (max_new_tokens) -> 7 gaps
        assert (r.completion_tokens, r.token_source) == (8, "server")
        assert r.text.startswith("lorem ipsum")
    sent = aws_env.requests[0]
    assert (sent.api, sent.action, sent.target) == ("sagemaker", "invocations-response-stream",
                                                   "byo-endpoint")
    if fmt == "messages":
        assert sent.body["messages"][0]["content"].startswith("Answer the question")
        assert sent.body["max_tokens"] == 8 and sent.body["stream"] is True
    else:
        assert sent.body == {"inputs": request().prompt, "stream": True,
                             "parameters": {"max_new_tokens": 8, "details": True}}


@pytest.mark.parametrize("fmt", ["tgi", "lmi", "messages"])
def test_sagemaker_without_stream_measures_latency_only(fmt: str, aws_env: AwsRuntimeEmulator) -> None:
    aws_env.sagemaker_styles["byo-endpoint"] = "lmi" if fmt == "lmi" else "tgi"
    endpoint = sagemaker(fmt, stream=False)
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert r.error == "" and r.first_token_ns is None
    assert (r.last_byte_ns - r.sent_ns) / 1e9 >= TTFT_S
    assert r.completion_tokens == 8 and r.token_source == "server"
    assert aws_env.requests[0].action == "invocations"


def test_sagemaker_tokens_fall_back_to_tokenizer_then_stream_estimate() -> None:
    plain = sagemaker(parameter_set="plain", count_tokens=lambda text: len(text))
    [r] = invoke_all(plain, [request(params(plain))])
    assert r.token_source == "tokenizer" and r.completion_tokens == len(r.text)
    assert r.prompt_tokens == 48  # counted when the payload file was built
    estimated = sagemaker(parameter_set="plain")
    [r] = invoke_all(estimated, [request(params(estimated))])
    assert (r.completion_tokens, r.token_source) == (8, "estimate")  # one TGI event per token


# --- Bedrock: APIs, model families, model ids ---------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", [
    "anthropic.claude-3-haiku-20240307-v1:0",
    "us.amazon.nova-micro-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
])
def test_bedrock_converse(model: str, stream: bool, aws_env: AwsRuntimeEmulator) -> None:
    endpoint = bedrock(model, stream=stream)
    results = invoke_all(endpoint, [request(params(endpoint))] * 3)
    for r in results:
        assert r.error == "", r.error_detail
        assert (r.completion_tokens, r.token_source) == (8, "server")
        assert r.prompt_tokens == 48  # the emulator's count, reported as usage
        if stream:
            assert (r.first_token_ns - r.sent_ns) / 1e9 >= TTFT_S * 0.9
            assert len(r.itl_us) == 7
        else:
            assert r.first_token_ns is None
    sent = aws_env.requests[0]
    assert sent.target == model  # ARNs arrive intact through botocore's percent-encoding
    assert sent.action == ("converse-stream" if stream else "converse")
    assert sent.body["inferenceConfig"] == {"maxTokens": 8, "temperature": 0.1}
    assert sent.body["messages"] == [{"role": "user", "content": [{"text": request().prompt}]}]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", [
    "anthropic.claude-3-haiku-20240307-v1:0",
    "us.meta.llama3-1-8b-instruct-v1:0",
    "mistral.mistral-7b-instruct-v0:2",
    "amazon.titan-text-express-v1",
    "us.amazon.nova-lite-v1:0",
])
def test_bedrock_invoke_model_bodies(model: str, stream: bool, aws_env: AwsRuntimeEmulator) -> None:
    endpoint = bedrock(model, api="invoke", stream=stream)
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert r.error == "", r.error_detail
    assert r.text.startswith("lorem ipsum")
    assert (r.completion_tokens, r.token_source) == (8, "server")  # invocation metrics / headers
    if stream:
        assert r.first_token_ns is not None and len(r.itl_us) == 7
    assert aws_env.requests[0].action == ("invoke-with-response-stream" if stream else "invoke")


# --- faults: one request of the wave gets it, the others are measured ----------------------

SAGEMAKER_FAULTS = {
    "throttle": "throttled", "http_500": "http_5xx", "http_503": "http_5xx",
    "validation": "http_4xx", "model_error": "http_5xx", "mid_stream_error": "http_5xx",
    "stall": "timeout", "drop": "connection", "drop_mid_stream": "stream_truncated",
    "bad_json": "bad_response",
}
BEDROCK_FAULTS = {**SAGEMAKER_FAULTS, "mid_stream_throttle": "throttled"}
NON_STREAM = {"mid_stream_error": "stream_truncated", "drop_mid_stream": "stream_truncated",
              "mid_stream_throttle": "stream_truncated"}
TIMEOUT_S = 0.6


# botocore reads a whole Converse reply itself and parses a cut-off body to an empty one, so
# there a truncated reply can only be told as a reply without output.
CONVERSE_WHOLE = {"mid_stream_error": "bad_response", "drop_mid_stream": "bad_response"}


def expected_class(fault: str, stream: bool, table: dict[str, str], api: str = "") -> str:
    if stream:
        return table[fault]
    if api == "converse" and fault in CONVERSE_WHOLE:
        return CONVERSE_WHOLE[fault]
    return NON_STREAM.get(fault, table[fault])


def check_wave(results, fault: str, expected: str, stream: bool) -> None:
    failed = [r for r in results if r.error]
    assert [r.error for r in failed] == [expected], [(r.error, r.error_detail) for r in results]
    assert failed[0].error_detail and failed[0].retries == 0
    if expected == "timeout":
        assert TIMEOUT_S * 0.9 <= (failed[0].last_byte_ns - failed[0].sent_ns) / 1e9 < TIMEOUT_S + 2
    if fault.startswith("mid_stream") and stream:
        assert failed[0].first_token_ns is not None  # tokens came before the break
    ok = [r for r in results if not r.error]
    assert len(ok) == 3
    for r in ok:
        assert r.completion_tokens == 8
        assert (r.first_token_ns is not None) == stream


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("fault", sorted(SAGEMAKER_FAULTS))
def test_sagemaker_fault_classes(fault: str, stream: bool, aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject(fault, times=1, stall_s=5)
    endpoint = sagemaker(stream=stream, timeout_s=TIMEOUT_S)
    results = invoke_all(endpoint, [request(params(endpoint))] * 4)
    check_wave(results, fault, expected_class(fault, stream, SAGEMAKER_FAULTS), stream)


BEDROCK_CASES = [
    pytest.param(fault, stream, api, id=f"{fault}-{'stream' if stream else 'whole'}-{api}")
    for fault in sorted(BEDROCK_FAULTS) for stream in (True, False) for api in ("converse", "invoke")
    if stream or fault != "mid_stream_throttle"  # a throttling event exists only in streams
]


@pytest.mark.parametrize(("fault", "stream", "api"), BEDROCK_CASES)
def test_bedrock_fault_classes(fault: str, stream: bool, api: str,
                               aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject(fault, times=1, stall_s=5)
    endpoint = bedrock(api=api, stream=stream, timeout_s=TIMEOUT_S)
    results = invoke_all(endpoint, [request(params(endpoint))] * 4)
    check_wave(results, fault, expected_class(fault, stream, BEDROCK_FAULTS, api), stream)


# --- our retries -------------------------------------------------------------------------

def test_throttled_requests_are_retried_counted_and_measured_on_the_final_attempt(
        aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject("throttle", times=2)
    endpoint = bedrock(retry={"max_retries": 3, "backoff_s": 0.4, "max_backoff_s": 2})
    started = time.time_ns()
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert r.error == "" and r.retries == 2
    assert [q.fault for q in aws_env.requests] == ["throttle", "throttle", None]
    # Two back-offs (>= 0.2 s and >= 0.4 s with jitter) passed before the final attempt was
    # sent; latency covers that attempt only (~0.06 s here).
    assert (r.sent_ns - started) / 1e9 >= 0.6
    assert (r.last_byte_ns - r.sent_ns) / 1e9 < 0.5


def test_a_throttled_and_retried_request_is_retry_wait_not_client_saturation(
        aws_env: AwsRuntimeEmulator) -> None:
    """REVIEW M3: the back-off is the server's doing; the client was on time."""
    from pytest_fmbench.load.engine import RecordContext, run_load
    from pytest_fmbench.load.patterns import LoadPlan
    from pytest_fmbench.metrics import compute_metrics

    aws_env.inject("throttle", times=2)
    endpoint = bedrock(retry={"max_retries": 3, "backoff_s": 0.4, "max_backoff_s": 2})
    records, lines = [], []
    # Saturation threshold well under the retry wait (>= 0.6 s), above a busy CI's loop lag.
    plan = LoadPlan(pattern="concurrency", concurrency=1, requests=1, timeout_s=5.0,
                    saturation_ms=200.0)
    stats = run_load(plan, endpoint.client, [request(params(endpoint))],
                     RecordContext("run", "br", "p.jsonl", 1, "br-p-c1"), records.append,
                     log=lines.append)
    [record] = records
    assert record.ok and record.retries == 2
    assert record.retry_wait_ns / 1e9 >= 0.6  # two back-offs and two throttled attempts
    assert (record.first_sent_ns - record.scheduled_ns) / 1e9 < 0.05
    assert not record.saturated and stats.saturated == 0
    assert not any("client saturated" in line for line in lines)
    assert any("retried after throttling" in line for line in lines)
    metrics = compute_metrics(records).iloc[0]
    assert metrics["retry_wait_max"] >= 0.6 and metrics["client_queue_max"] < 0.05
    assert metrics["client_saturated"] == 0


def test_retries_are_bounded(aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject("throttle", times=None)
    endpoint = bedrock(retry={"max_retries": 2, "backoff_s": 0.01})
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert (r.error, r.retries, len(aws_env.requests)) == ("throttled", 2, 3)


def test_bedrock_retries_throttling_three_times_by_default(aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject("throttle", times=None)
    endpoint = bedrock(retry={"backoff_s": 0.01})
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert (r.error, r.retries) == ("throttled", 3)


def test_sagemaker_does_not_retry_by_default_and_only_retries_listed_classes(
        aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject("throttle", times=1)
    [r] = invoke_all(sagemaker(), [request()])
    assert (r.error, r.retries) == ("throttled", 0)
    aws_env.inject("http_500", times=1)
    endpoint = sagemaker(retry={"max_retries": 3, "backoff_s": 0.01})
    [r] = invoke_all(endpoint, [request()])
    assert (r.error, r.retries) == ("http_5xx", 0)  # only "throttled" is retried by default
    aws_env.inject("http_500", times=1)
    endpoint = sagemaker(retry={"max_retries": 3, "backoff_s": 0.01, "retry_on": ["http_5xx"]})
    [r] = invoke_all(endpoint, [request()])
    assert (r.error, r.retries) == ("", 1)


def test_botocore_does_not_retry_behind_our_back(aws_env: AwsRuntimeEmulator) -> None:
    aws_env.inject("http_503", times=1)
    [r] = invoke_all(sagemaker(), [request()])
    assert r.error == "http_5xx" and len(aws_env.requests) == 1


def test_parameters_bedrock_cannot_take_are_reported_not_sent(aws_env: AwsRuntimeEmulator) -> None:
    config = bench_config({"name": "br", "backend": "bedrock", "ep_name": "us.amazon.nova-micro-v1:0",
                           "inference_spec": {"parameter_set": "odd"}},
                          parameters={"odd": {"max_tokens": 4, "frequency_penalty": 1, "caching": True}})
    log: list[str] = []
    endpoint = BedrockEndpoint(config, config.experiments[0], context(log))
    endpoint.deploy()
    assert any("frequency_penalty" in line and "caching" not in line for line in log)
    [r] = invoke_all(endpoint, [request(params(endpoint))])
    assert r.error == "" and aws_env.requests[0].body["inferenceConfig"] == {"maxTokens": 4}
    assert json.dumps(aws_env.requests[0].body).count("frequency_penalty") == 0


def test_the_report_shows_retry_wait_apart_from_client_overhead() -> None:
    import pandas as pd

    from pytest_fmbench.report.markdown import _client

    metrics = pd.DataFrame([{"client_queue_max": 0.001, "client_queue_p95": 0.001, "latency_p50": 0.1,
                             "client_loop_lag_max": 0.001, "client_saturated": 0, "requests": 3,
                             "retry_wait_max": 0.75}])
    text = "\n".join(_client(metrics))
    assert "retried after throttling waited up to 0.75 s" in text
    assert "Client saturated" not in text and "may have been a bottleneck" not in text
