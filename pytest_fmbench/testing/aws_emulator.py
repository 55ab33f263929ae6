"""A local stand-in for the SageMaker and Bedrock *runtime* APIs, with injectable faults.

Point real boto3 clients at it (``endpoint_url=`` or ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` /
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``) with dummy credentials. It speaks the wire protocols
botocore expects, AWS event-stream framing included:

- sagemaker-runtime: ``POST /endpoints/{name}/invocations`` and
  ``/invocations-response-stream`` (``PayloadPart`` events). The body decides the reply:
  ``messages`` → OpenAI chat completion (SSE lines when streaming); ``inputs`` → TGI
  (``data:{"token":...}`` lines) or LMI/DJL (JSON lines), per ``sagemaker_styles``.
- bedrock-runtime: ``POST /model/{id}/converse``, ``/converse-stream``, ``/invoke`` and
  ``/invoke-with-response-stream`` (``chunk`` events, with the final
  ``amazon-bedrock-invocationMetrics``), for Anthropic, Meta, Mistral, Titan and Nova bodies.

Timing: the first token after ``ttft_s``, then one every ``token_delay_s``; a reply has
``output_tokens`` tokens, or fewer when the request asks for fewer (``max_new_tokens``,
``maxTokens``, ...). Faults are added with :meth:`AwsRuntimeEmulator.inject` (see ``FAULTS``).
The control plane (create/describe/delete endpoint) is not here: use moto's server
(:func:`moto_server`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import unquote

from aiohttp import web

EVENT_STREAM = "application/vnd.amazon.eventstream"

FAULTS = {
    "throttle": "HTTP 429 ThrottlingException before any byte of the reply",
    "http_500": "HTTP 500 internal failure",
    "http_503": "HTTP 503 service unavailable",
    "validation": "HTTP 400 ValidationException",
    "model_error": "SageMaker: HTTP 424 ModelError (the container failed); Bedrock: ModelErrorException",
    "mid_stream_error": "an exception event after `after_tokens` tokens (ModelStreamError / modelStreamErrorException)",
    "mid_stream_throttle": "a throttlingException event after `after_tokens` tokens (Bedrock streams)",
    "stall": "the reply stops after `after_tokens` tokens and hangs for `stall_s`",
    "drop": "the connection closes before any response",
    "drop_mid_stream": "the connection closes after `after_tokens` tokens",
    "bad_json": "the reply (or a stream part) is not JSON",
}

# The Converse model id, passed to the reply builder inside the body (never sent back).
_MODEL_KEY = "__emulator_model_id"
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
          "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et")


# -- event-stream framing ----------------------------------------------------------------

def encode_event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude, CRC, string headers, payload, CRC."""
    encoded = b""
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded += (struct.pack(">B", len(name_bytes)) + name_bytes + b"\x07"
                    + struct.pack(">H", len(value_bytes)) + value_bytes)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    return encode_event_message(
        {":message-type": "event", ":event-type": event_type, ":content-type": content_type},
        payload,
    )


def exception_event(exception_type: str, body: dict[str, Any]) -> bytes:
    return encode_event_message(
        {":message-type": "exception", ":exception-type": exception_type,
         ":content-type": "application/json"},
        json.dumps(body).encode(),
    )


# -- faults and request log --------------------------------------------------------------

@dataclass
class FaultRule:
    kind: str
    times: int | None = 1          # how many matching requests get it (None: all)
    every: int | None = None       # only every n-th matching request
    api: str | None = None         # "sagemaker" or "bedrock"
    target: str | None = None      # endpoint name or model id
    after_tokens: int = 2
    stall_s: float = 30.0
    seen: int = 0
    fired: int = 0

    def take(self, api: str, target: str) -> bool:
        if (self.api and self.api != api) or (self.target and self.target != target):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.seen += 1
        if self.every and self.seen % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class LoggedRequest:
    api: str
    action: str
    target: str
    body: Any
    fault: str | None
    received: float = field(default_factory=time.time)


@dataclass
class _Reply:
    """What one request is answered with."""

    prompt_tokens: int
    tokens: list[str]
    fault: FaultRule | None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


# -- the server --------------------------------------------------------------------------

class AwsRuntimeEmulator:
    """sagemaker-runtime and bedrock-runtime on loopback; use as a context manager."""

    def __init__(self, *, ttft_s: float = 0.005, token_delay_s: float = 0.001,
                 output_tokens: int = 16, sagemaker_style: str = "tgi",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.ttft_s = ttft_s
        self.token_delay_s = token_delay_s
        self.output_tokens = output_tokens
        # "tgi" or "lmi" reply shape for `inputs` bodies, per endpoint name (default below).
        self.sagemaker_style = sagemaker_style
        self.sagemaker_styles: dict[str, str] = {}
        self.requests: list[LoggedRequest] = []
        # Scripted Converse replies: ``(model_id, prompt) -> text``, or None for the default
        # words (a deterministic judge panel: ``pytest_fmbench.testing.judges``).
        self.converse_reply: Callable[[str, str], str | None] | None = None
        self._faults: list[FaultRule] = []
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="aws-runtime-emulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _start_site(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the only way to learn the bound port
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stopping is not None:
            loop.call_soon_threadsafe(self._stopping.set)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------
    def inject(self, kind: str, *, times: int | None = 1, every: int | None = None,
               api: str | None = None, target: str | None = None, after_tokens: int = 2,
               stall_s: float = 30.0) -> FaultRule:
        """Answer matching requests with a fault (first matching rule wins)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault '{kind}' (known: {', '.join(FAULTS)})")
        rule = FaultRule(kind, times, every, api, target, after_tokens, stall_s)
        with self._lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        self.clear_faults()
        self.requests.clear()

    def _take_fault(self, api: str, target: str) -> FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.take(api, target):
                    return rule
        return None

    # -- dispatch ----------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        prefix, _, action = raw.rpartition("/")
        body_bytes = await request.read()
        if prefix.startswith("/endpoints/"):
            api, target = "sagemaker", unquote(prefix[len("/endpoints/"):])
        elif prefix.startswith("/model/"):
            api, target = "bedrock", unquote(prefix[len("/model/"):])
        else:
            return _error(404, "UnknownOperationException", f"no route for {raw}")
        try:
            body: Any = json.loads(body_bytes) if body_bytes else {}
        except ValueError:
            body = body_bytes.decode(errors="replace")
        fault = self._take_fault(api, target)
        self.requests.append(LoggedRequest(api, action, target, body, fault.kind if fault else None))
        if fault is not None:
            early = await self._early_fault(request, api, fault)
            if early is not None:
                return early
        if api == "sagemaker":
            if action == "invocations":
                return await self._sagemaker(request, target, body, fault, stream=False)
            if action == "invocations-response-stream":
                return await self._sagemaker(request, target, body, fault, stream=True)
        else:
            handlers = {"converse": self._converse, "converse-stream": self._converse_stream,
                        "invoke": self._invoke, "invoke-with-response-stream": self._invoke_stream}
            if action in ("converse", "converse-stream") and isinstance(body, dict):
                body = {**body, _MODEL_KEY: target}
            if action in handlers:
                return await handlers[action](request, body, fault)
        return _error(404, "UnknownOperationException", f"no action {action}")

    async def _early_fault(self, request: web.Request, api: str,
                           fault: FaultRule) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "throttle":
            return _error(429, "ThrottlingException", "Rate exceeded" if api == "sagemaker"
                          else "Too many requests, please wait before trying again.")
        if kind == "http_500":
            if api == "sagemaker":
                return _error(500, "InternalFailure", "An internal failure occurred.")
            return _error(500, "InternalServerException", "The server encountered an error.")
        if kind == "http_503":
            if api == "sagemaker":
                return _error(503, "ServiceUnavailable", "The service is unavailable.")
            return _error(503, "ServiceUnavailableException", "The service is unavailable.")
        if kind == "validation":
            code = "ValidationError" if api == "sagemaker" else "ValidationException"
            return _error(400, code, "Malformed input request.")
        if kind == "model_error":
            if api == "sagemaker":
                return _error(424, "ModelError", "Received server error (500) from primary",
                              OriginalStatusCode=500, OriginalMessage="CUDA out of memory",
                              LogStreamArn="arn:aws:logs:local:000000000000:log-group:/emulator")
            return _error(424, "ModelErrorException", "The model failed to process the request.",
                          originalStatusCode=500)
        if kind == "drop":
            _abort(request)
            return web.Response()
        return None

    # -- reply building ----------------------------------------------------------------
    def _reply(self, prompt: str, max_tokens: Any, fault: FaultRule | None) -> _Reply:
        count = self.output_tokens
        if isinstance(max_tokens, int) and max_tokens > 0:
            count = min(count, max_tokens)
        tokens = [("" if i == 0 else " ") + _WORDS[i % len(_WORDS)] for i in range(count)]
        return _Reply(max(1, math.ceil(len(prompt.split()) * 4 / 3)), tokens, fault)

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _hang(self, fault: FaultRule) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), fault.stall_s)

    async def _complete(self, reply: _Reply) -> bool:
        """Wait as long as generating the whole reply takes; False when a fault hangs it."""
        fault = reply.fault
        if fault is not None and fault.kind == "stall":
            await self._hang(fault)
            return False
        await self._pause(self.ttft_s + self.token_delay_s * max(0, len(reply.tokens) - 1))
        return True

    async def _stream(self, request: web.Request, reply: _Reply,
                      frames: Iterator[tuple[str | None, bytes]],
                      mid_error: bytes | None, mid_throttle: bytes | None,
                      extra_headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Write event-stream frames; ``frames`` yields (token or None, frame bytes)."""
        response = web.StreamResponse(status=200, headers={
            "Content-Type": EVENT_STREAM, "x-amzn-RequestId": _request_id(), **(extra_headers or {})})
        response.enable_chunked_encoding()
        await response.prepare(request)
        fault = reply.fault
        sent_tokens = 0
        first = True
        try:
            for token, frame in frames:
                if token is not None:
                    if fault is not None and sent_tokens >= fault.after_tokens:
                        if fault.kind == "mid_stream_error" and mid_error is not None:
                            await response.write(mid_error)
                            return response
                        if fault.kind == "mid_stream_throttle" and mid_throttle is not None:
                            await response.write(mid_throttle)
                            return response
                        if fault.kind == "stall":
                            await self._hang(fault)
                            return response
                        if fault.kind == "drop_mid_stream":
                            _abort(request)
                            return response
                    await self._pause(self.ttft_s if first else self.token_delay_s)
                    first = False
                    sent_tokens += 1
                await response.write(frame)
        except ConnectionError:
            pass  # the client went away (it may stop reading early, e.g. on a bad chunk)
        return response

    # -- sagemaker ---------------------------------------------------------------------
    async def _sagemaker(self, request: web.Request, endpoint: str, body: Any,
                         fault: FaultRule | None, *, stream: bool) -> web.StreamResponse:
        if not isinstance(body, dict):
            return _error(424, "ModelError", "the container could not parse the body",
                          OriginalStatusCode=400, OriginalMessage="invalid JSON")
        chat = "messages" in body
        style = "messages" if chat else self.sagemaker_styles.get(endpoint, self.sagemaker_style)
        if chat:
            prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        else:
            prompt = str(body.get("inputs", ""))
            max_tokens = (body.get("parameters") or {}).get("max_new_tokens")
        reply = self._reply(prompt, max_tokens, fault)
        details = bool((body.get("parameters") or {}).get("details"))
        headers = {"X-Amzn-Invoked-Production-Variant": "AllTraffic"}
        if not stream:
            if not await self._complete(reply):
                return web.Response(status=200)
            broken = await _unstreamed_fault(
                request, fault, partial=b'{"generated_text": "' + reply.text.encode(),
                bad_body=b"<html>not json", cut=("drop_mid_stream", "mid_stream_error"))
            if broken is not None:
                return broken
            return web.json_response(_sagemaker_body(style, reply, details), headers=headers)

        def frames() -> Iterator[tuple[str | None, bytes]]:
            for index, token in enumerate(reply.tokens):
                last = index == len(reply.tokens) - 1
                line = _sagemaker_stream_line(style, reply, index, token, last, details)
                if fault is not None and fault.kind == "bad_json" and index == fault.after_tokens:
                    line = b"data:{not json\n"
                yield token, event("PayloadPart", line, "application/octet-stream")
            if style == "messages":
                usage = {"prompt_tokens": reply.prompt_tokens,
                         "completion_tokens": len(reply.tokens),
                         "total_tokens": reply.prompt_tokens + len(reply.tokens)}
                tail = (b"data: " + json.dumps({"choices": [], "usage": usage}).encode()
                        + b"\n\ndata: [DONE]\n\n")
                yield None, event("PayloadPart", tail, "application/octet-stream")

        mid_error = exception_event("ModelStreamError", {
            "Message": "Your model stream failed: the model server crashed",
            "ErrorCode": "ModelStreamError"})
        return await self._stream(request, reply, frames(), mid_error, None, headers)

    # -- bedrock -----------------------------------------------------------------------
    async def _converse(self, request: web.Request, body: Any,
                        fault: FaultRule | None) -> web.StreamResponse:
        reply = self._converse_reply(body, fault)
        if not await self._complete(reply):
            return web.Response(status=200)
        broken = await _unstreamed_fault(request, fault, partial=b'{"output": {"message": ')
        if broken is not None:
            return broken
        return web.json_response({
            "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
            "stopReason": "end_turn",
            "usage": _converse_usage(reply),
            "metrics": {"latencyMs": 1},
        }, headers={"x-amzn-RequestId": _request_id()})

    def _converse_reply(self, body: Any, fault: FaultRule | None) -> _Reply:
        body = body if isinstance(body, dict) else {}
        prompt = " ".join(
            str(part.get("text", "")) for message in body.get("messages", [])
            for part in message.get("content", []) if isinstance(part, dict))
        max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
        scripted = (self.converse_reply(str(body.get(_MODEL_KEY, "")), prompt)
                    if self.converse_reply is not None else None)
        if scripted is not None:
            return _Reply(max(1, len(prompt.encode()) // 4),
                          re.findall(r"\s*\S+", scripted) or [scripted], fault)
        return self._reply(prompt, max_tokens, fault)

    async def _converse_stream(self, request: web.Request, body: Any,
                               fault: FaultRule | None) -> web.StreamResponse:
        reply = self._converse_reply(body, fault)

        def frames() -> Iterator[tuple[str | None, bytes]]:
            yield None, event("messageStart", b'{"role":"assistant"}')
            for index, token in enumerate(reply.tokens):
                payload = json.dumps({"contentBlockIndex": 0, "delta": {"text": token}}).encode()
                if fault is not None and fault.kind == "bad_json" and index == fault.after_tokens:
                    payload = b"{not json"
                yield token, event("contentBlockDelta", payload)
            yield None, event("contentBlockStop", b'{"contentBlockIndex":0}')
            yield None, event("messageStop", b'{"stopReason":"end_turn"}')
            yield None, event("metadata", json.dumps(
                {"usage": _converse_usage(reply), "metrics": {"latencyMs": 1}}).encode())

        return await self._stream(
            request, reply, frames(),
            exception_event("modelStreamErrorException", {
                "message": "The model stream failed.", "originalStatusCode": 500}),
            exception_event("throttlingException", {"message": "Too many tokens, please wait."}))

    def _invoke_reply(self, body: Any, fault: FaultRule | None) -> tuple[str, _Reply]:
        body = body if isinstance(body, dict) else {}
        kind = invoke_body_kind(body)
        if kind in ("anthropic", "nova"):
            prompt = " ".join(_message_text(m) for m in body.get("messages", []))
        else:
            prompt = str(body.get("prompt") or body.get("inputText") or "")
        max_tokens = {
            "anthropic": body.get("max_tokens"),
            "meta": body.get("max_gen_len"),
            "mistral": body.get("max_tokens"),
            "titan": (body.get("textGenerationConfig") or {}).get("maxTokenCount"),
            "nova": (body.get("inferenceConfig") or {}).get("max_new_tokens")
            or (body.get("inferenceConfig") or {}).get("maxTokens"),
        }.get(kind)
        return kind, self._reply(prompt, max_tokens, fault)

    async def _invoke(self, request: web.Request, body: Any,
                      fault: FaultRule | None) -> web.StreamResponse:
        kind, reply = self._invoke_reply(body, fault)
        if not await self._complete(reply):
            return web.Response(status=200)
        broken = await _unstreamed_fault(request, fault, partial=b'{"generation": "')
        if broken is not None:
            return broken
        headers = {
            "x-amzn-RequestId": _request_id(),
            "X-Amzn-Bedrock-Input-Token-Count": str(reply.prompt_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(len(reply.tokens)),
            "X-Amzn-Bedrock-Invocation-Latency": "1",
        }
        return web.json_response(_invoke_body(kind, reply), headers=headers)

    async def _invoke_stream(self, request: web.Request, body: Any,
                             fault: FaultRule | None) -> web.StreamResponse:
        kind, reply = self._invoke_reply(body, fault)

        def chunk(data: dict[str, Any]) -> bytes:
            raw = json.dumps(data).encode()
            return event("chunk", json.dumps({"bytes": base64.b64encode(raw).decode()}).encode())

        def frames() -> Iterator[tuple[str | None, bytes]]:
            chunks = _invoke_stream_chunks(kind, reply)
            for index, (token, data) in enumerate(chunks):
                if fault is not None and fault.kind == "bad_json" and index == fault.after_tokens:
                    yield token, event("chunk", json.dumps(
                        {"bytes": base64.b64encode(b"{not json").decode()}).encode())
                    continue
                if index == len(chunks) - 1:
                    data = {**data, "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": reply.prompt_tokens,
                        "outputTokenCount": len(reply.tokens),
                        "invocationLatency": 1, "firstByteLatency": 1}}
                yield token, chunk(data)

        return await self._stream(
            request, reply, frames(),
            exception_event("modelStreamErrorException", {
                "message": "The model stream failed.", "originalStatusCode": 500}),
            exception_event("throttlingException", {"message": "Too many tokens, please wait."}))


# -- reply shapes ------------------------------------------------------------------------

def _sagemaker_body(style: str, reply: _Reply, details: bool) -> Any:
    if style == "messages":
        return {
            "id": "chatcmpl-emulator", "object": "chat.completion", "model": "emulator",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": reply.text}}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.tokens),
                      "total_tokens": reply.prompt_tokens + len(reply.tokens)},
        }
    result: dict[str, Any] = {"generated_text": reply.text}
    if details:
        result["details"] = {"finish_reason": "length", "generated_tokens": len(reply.tokens)}
    # TGI answers a list; LMI/DJL an object.
    return [result] if style == "tgi" else result


def _sagemaker_stream_line(style: str, reply: _Reply, index: int, token: str, last: bool,
                           details: bool) -> bytes:
    if style == "messages":
        chunk = {"id": "chatcmpl-emulator", "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": token},
                              "finish_reason": "length" if last else None}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
    data: dict[str, Any] = {
        "token": {"id": index, "text": token, "logprob": -0.1, "special": False},
        "generated_text": reply.text if last else None,
        "details": ({"finish_reason": "length", "generated_tokens": len(reply.tokens)}
                    if last and details else None),
    }
    if style == "lmi":
        return json.dumps(data).encode() + b"\n"
    return b"data:" + json.dumps(data).encode() + b"\n\n"


def _converse_usage(reply: _Reply) -> dict[str, int]:
    return {"inputTokens": reply.prompt_tokens, "outputTokens": len(reply.tokens),
            "totalTokens": reply.prompt_tokens + len(reply.tokens)}


def invoke_body_kind(body: dict[str, Any]) -> str:
    """Which model family an InvokeModel body is written for (by its shape)."""
    if "anthropic_version" in body:
        return "anthropic"
    if "inputText" in body:
        return "titan"
    if "messages" in body:
        return "nova"
    if "max_gen_len" in body:
        return "meta"
    return "mistral"


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


def _invoke_body(kind: str, reply: _Reply) -> dict[str, Any]:
    n_in, n_out, text = reply.prompt_tokens, len(reply.tokens), reply.text
    if kind == "anthropic":
        return {"id": "msg_emulator", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens",
                "usage": {"input_tokens": n_in, "output_tokens": n_out}}
    if kind == "meta":
        return {"generation": text, "prompt_token_count": n_in,
                "generation_token_count": n_out, "stop_reason": "length"}
    if kind == "titan":
        return {"inputTextTokenCount": n_in, "results": [
            {"tokenCount": n_out, "outputText": text, "completionReason": "LENGTH"}]}
    if kind == "nova":
        return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": "max_tokens", "usage": {"inputTokens": n_in, "outputTokens": n_out}}
    return {"outputs": [{"text": text, "stop_reason": "length"}]}


def _invoke_stream_chunks(kind: str, reply: _Reply) -> list[tuple[str | None, dict[str, Any]]]:
    n_in, tokens = reply.prompt_tokens, reply.tokens
    chunks: list[tuple[str | None, dict[str, Any]]] = []
    if kind == "anthropic":
        chunks.append((None, {"type": "message_start", "message": {
            "role": "assistant", "usage": {"input_tokens": n_in, "output_tokens": 1}}}))
        chunks += [(t, {"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}}) for t in tokens]
        chunks.append((None, {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                              "usage": {"output_tokens": len(tokens)}}))
        chunks.append((None, {"type": "message_stop"}))
    elif kind == "meta":
        chunks += [(t, {"generation": t, "prompt_token_count": n_in if i == 0 else None,
                        "generation_token_count": i + 1,
                        "stop_reason": "length" if i == len(tokens) - 1 else None})
                   for i, t in enumerate(tokens)]
    elif kind == "titan":
        chunks += [(t, {"outputText": t, "index": 0, "totalOutputTextTokenCount": i + 1,
                        "completionReason": "LENGTH" if i == len(tokens) - 1 else None,
                        "inputTextTokenCount": n_in}) for i, t in enumerate(tokens)]
    elif kind == "nova":
        chunks.append((None, {"messageStart": {"role": "assistant"}}))
        chunks += [(t, {"contentBlockDelta": {"delta": {"text": t}, "contentBlockIndex": 0}})
                   for t in tokens]
        chunks.append((None, {"messageStop": {"stopReason": "max_tokens"}}))
        chunks.append((None, {"metadata": {"usage": {"inputTokens": n_in,
                                                     "outputTokens": len(tokens)}}}))
    else:
        chunks += [(t, {"outputs": [{"text": t, "stop_reason": "length"
                                     if i == len(tokens) - 1 else None}]})
                   for i, t in enumerate(tokens)]
    return chunks


# -- small helpers -----------------------------------------------------------------------

def _request_id() -> str:
    return f"emulator-{time.monotonic_ns():x}"


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"message": message, "Message": message, **extra}
    return web.json_response(body, status=status, headers={
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.emulator/",
        "x-amzn-RequestId": _request_id(),
    })


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _unstreamed_fault(
    request: web.Request, fault: FaultRule | None, *, partial: bytes,
    bad_body: bytes = b"{oops",
    cut: tuple[str, ...] = ("drop_mid_stream", "mid_stream_error", "mid_stream_throttle"),
) -> web.StreamResponse | None:
    """The broken reply a non-streamed call gets for a mid-response fault, or None."""
    if fault is None:
        return None
    if fault.kind == "bad_json":
        return web.Response(body=bad_body, content_type="application/json")
    if fault.kind in cut:
        return await _partial_body(request, partial)
    return None


async def _partial_body(request: web.Request, head: bytes) -> web.StreamResponse:
    """Headers promising a longer body, part of it, then the connection closes."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(head) + 1000
    await response.prepare(request)
    await response.write(head)
    _abort(request)
    return response


# -- control plane -----------------------------------------------------------------------

@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """moto's server (SageMaker control plane and more) on loopback; yields its URL.

    Endpoints it creates are ``InService`` at once, and it rejects newer instance types
    (g5, g6, p4d, p5, inf2): use ``ml.g4dn.*`` / ``ml.p3.*`` with it.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.stop()


def aws_environment(*, control_url: str | None = None, runtime_url: str | None = None,
                    region: str = "us-east-1") -> dict[str, str]:
    """Environment variables that point boto3 at local servers, with dummy credentials."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": region, "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if control_url:
        env["AWS_ENDPOINT_URL_SAGEMAKER"] = control_url
        # The endpoints' CloudWatch metrics (telemetry): moto serves CloudWatch too.
        env["AWS_ENDPOINT_URL_CLOUDWATCH"] = control_url
    if runtime_url:
        env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime_url
        env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = runtime_url
    return env
