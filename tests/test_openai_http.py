"""Unit tests of pytest_fmbench.endpoints.openai_http against the fake OpenAI server."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.openai_http import (
    OpenAIClient,
    classify_status,
    openai_parameters,
)
from pytest_fmbench.run import run_async
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import serve_raw

MS = 1_000_000
US = 1_000


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeOpenAIServer]]:
    """Start a fake server with the given behaviour; stopped at the end of the test."""
    servers: list[FakeOpenAIServer] = []

    def start(**behaviour: Any) -> FakeOpenAIServer:
        server = FakeOpenAIServer(ServerBehaviour(**behaviour))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def invoke(url: str, requests: list[InferenceRequest], **client: Any) -> list[InferenceResult]:
    async def go() -> list[InferenceResult]:
        openai = OpenAIClient(url, **client)
        try:
            return [await openai.invoke(request) for request in requests]
        finally:
            await openai.aclose()

    return run_async(go)


def one(url: str, prompt: str = "one two three four", **client: Any) -> InferenceResult:
    return invoke(url, [InferenceRequest(prompt, {}, prompt_tokens=11)], **client)[0]


# --- streaming, timings and tokens --------------------------------------------------------

@pytest.mark.parametrize("api", ["completions", "chat"])
def test_streaming_with_server_usage(serve, api: str) -> None:
    server = serve(ttft_s=0.1, token_delay_s=0.02, completion_tokens=5)
    result = one(server.url, api=api)

    assert result.error == "", result.error_detail
    assert result.status == 200
    assert result.text == " t0 t1 t2 t3 t4"
    assert result.token_source == "server"
    assert result.completion_tokens == 5
    assert result.prompt_tokens == 4  # the server counts words
    assert result.first_token_ns is not None and result.first_reasoning_ns is None
    ttft = result.first_token_ns - result.sent_ns
    assert 95 * MS <= ttft < 400 * MS
    assert len(result.itl_us) == 4
    # One late wake-up shortens the next gap, so bound each gap loosely and their sum tightly.
    assert all(0 <= gap < 150 * US for gap in result.itl_us)
    assert sum(result.itl_us) >= 4 * 15 * US
    assert result.last_byte_ns >= result.first_token_ns + 4 * 15 * MS

    body = server.stats.bodies[0]
    if api == "chat":
        assert body["messages"] == [{"role": "user", "content": "one two three four"}]
    else:
        assert body["prompt"] == "one two three four"
    assert server.stats.requests == 1


def test_stream_options_include_usage_sent_when_streaming(serve) -> None:
    server = serve()
    one(server.url)
    body = server.stats.bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_streaming_without_usage_estimates_from_chunks(serve) -> None:
    server = serve(completion_tokens=6, usage=False)
    result = one(server.url)
    assert result.error == ""
    assert result.token_source == "estimate"
    assert result.completion_tokens == 6  # one per content chunk
    assert result.prompt_tokens == 11  # counted when the payload file was built


def test_streaming_without_usage_uses_the_tokenizer(serve) -> None:
    server = serve(completion_tokens=6, usage=False)
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return 42

    result = one(server.url, count_tokens=count)
    assert result.token_source == "tokenizer"
    assert result.completion_tokens == 42
    assert result.prompt_tokens == 11
    assert counted == [" t0 t1 t2 t3 t4 t5"]


def test_server_usage_wins_over_the_tokenizer(serve) -> None:
    server = serve(completion_tokens=3)
    result = one(server.url, count_tokens=lambda text: 99)
    assert result.token_source == "server"
    assert result.completion_tokens == 3


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_non_streaming(serve, api: str) -> None:
    server = serve(completion_tokens=4)
    result = one(server.url, api=api, stream=False)
    assert result.error == ""
    assert result.text == " t0 t1 t2 t3"
    assert result.first_token_ns is None
    assert result.itl_us == []
    assert result.completion_tokens == 4
    assert result.token_source == "server"
    body = server.stats.bodies[0]
    assert body["stream"] is False
    assert "stream_options" not in body


def test_non_streaming_without_usage(serve) -> None:
    server = serve(completion_tokens=4, usage=False)
    result = one(server.url, stream=False, count_tokens=lambda text: len(text.split()))
    assert result.token_source == "tokenizer"
    assert result.completion_tokens == 4


# --- request body -------------------------------------------------------------------------

def test_parameter_translation() -> None:
    assert openai_parameters({
        "max_new_tokens": 100, "top_p": 0.92, "temperature": 0.1, "details": True,
        "stop": "<|eot_id|>", "do_sample": True, "return_full_text": False,
        "decoder_input_details": True, "truncate": 10, "watermark": False, "stream": False,
    }) == {"max_tokens": 100, "top_p": 0.92, "temperature": 0.1, "stop": "<|eot_id|>"}


def test_parameters_reach_the_server_translated(serve) -> None:
    server = serve()
    parameters = {"max_new_tokens": 3, "top_p": 0.9, "details": True, "do_sample": True,
                  "return_full_text": False, "stop": "<|eot_id|>"}
    result = invoke(server.url, [InferenceRequest("hello", parameters)], model="m-1",
                    extra_body={"seed": 7}, api="chat")[0]
    assert result.completion_tokens == 3  # the server honoured max_tokens
    body = server.stats.bodies[0]
    assert body["model"] == "m-1"
    assert body["max_tokens"] == 3
    assert body["top_p"] == 0.9
    assert body["stop"] == "<|eot_id|>"
    assert body["seed"] == 7
    for dropped in ("max_new_tokens", "details", "do_sample", "return_full_text"):
        assert dropped not in body


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_normalised(suffix: str) -> None:
    assert OpenAIClient("http://h:1" + suffix).url == "http://h:1/v1/completions"
    assert OpenAIClient("http://h:1" + suffix, api="chat").url == "http://h:1/v1/chat/completions"


def test_a_query_in_the_base_url_stays_after_the_path() -> None:
    client = OpenAIClient("https://h.example.com/openai/v1?api-version=2024-10-21", api="chat")
    assert client.url == "https://h.example.com/openai/v1/chat/completions?api-version=2024-10-21"
    assert client.path == "/openai/v1/chat/completions?api-version=2024-10-21"


# --- faults -------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "error", "status"), [
    ("throttle", "throttled", 429),
    ("error_5xx", "http_5xx", 503),
    ("error_4xx", "http_4xx", 400),
    ("truncate", "stream_truncated", 200),
    ("garbage", "bad_response", 200),
    ("drop", "connection", None),
])
def test_fault_to_error_class(serve, fault: str, error: str, status: int | None) -> None:
    server = serve(fault=fault, completion_tokens=6)
    result = one(server.url, timeout_s=5)
    assert result.error == error, result.error_detail
    assert result.status == status
    assert result.last_byte_ns >= result.sent_ns
    assert result.token_source == ""  # tokens are not filled in for failures


def test_stall_is_a_timeout(serve) -> None:
    server = serve(fault="stall", completion_tokens=4, stall_s=3.0)
    result = one(server.url, timeout_s=0.3)
    assert result.error == "timeout"
    assert "0.3" in result.error_detail
    assert result.first_token_ns is not None  # one chunk arrived before the stall
    elapsed = result.last_byte_ns - result.sent_ns
    assert 250 * MS <= elapsed < 2000 * MS


def test_fault_every_third_request(serve) -> None:
    server = serve(fault="error_5xx", fault_every=3)
    results = invoke(server.url, [InferenceRequest(f"p{i}") for i in range(9)])
    assert [r.error for r in results] == ["", "", "http_5xx"] * 3
    assert server.stats.requests == 9


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = one(f"http://127.0.0.1:{port}", timeout_s=5)
    assert result.error == "connection"
    assert result.status is None


@pytest.mark.parametrize(("status", "error"), [
    (429, "throttled"), (400, "http_4xx"), (404, "http_4xx"), (500, "http_5xx"),
    (503, "http_5xx"),
])
def test_classify_status(status: int, error: str) -> None:
    assert classify_status(status) == error


# --- reasoning deltas ---------------------------------------------------------------------

def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def run_with_handler(chunks: list[dict[str, Any]], gap_s: float = 0.03) -> InferenceResult:
    """Serve ``chunks`` as one chat stream, ``gap_s`` apart."""
    parts = [_sse(chunk) for chunk in chunks] + [b"data: [DONE]\n\n"]
    return serve_raw(parts, gap_s=gap_s, client={"api": "chat"})[0]


def delta(finish: str | None = None, **fields: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def test_reasoning_deltas_set_first_reasoning_not_first_token() -> None:
    result = run_with_handler([
        delta(role="assistant"),
        delta(reasoning_content="hmm"),
        delta(reasoning_content=" let me see"),
        delta(finish="stop", reasoning="done"),
    ])
    assert result.error == "", result.error_detail
    assert result.first_reasoning_ns is not None
    assert result.first_token_ns is None
    assert result.itl_us == []
    assert result.text == ""


def test_content_after_reasoning_sets_first_token_later() -> None:
    result = run_with_handler([
        delta(reasoning_content="hmm"),
        delta(reasoning_content="..."),
        delta(content="Answer"),
        delta(content=" here", finish="stop"),
    ])
    assert result.error == ""
    assert result.first_reasoning_ns is not None and result.first_token_ns is not None
    assert result.first_token_ns - result.first_reasoning_ns >= 40 * MS
    assert result.text == "Answer here"
    assert len(result.itl_us) == 1  # only content chunks count as ITL gaps
    assert result.token_source == "estimate" and result.completion_tokens == 2
