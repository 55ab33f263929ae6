"""OpenAI-compatible HTTP client (``/v1/completions``, ``/v1/chat/completions``), streamed.

Written once and used by every backend that speaks this API (local, openai). The hot path
timestamps each chunk as it arrives and does only what the record needs: find whether the
chunk carries content, and keep the last ``usage`` seen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult

Api = Literal["completions", "chat"]

# FMBench parameter sets are written for TGI/DJL containers; these keys mean nothing to an
# OpenAI-compatible server and some servers reject unknown fields.
_DROPPED_PARAMETERS = frozenset(
    {"details", "do_sample", "return_full_text", "Content-type", "decoder_input_details",
     "truncate", "watermark", "stream"}
)
_RENAMED_PARAMETERS = {"max_new_tokens": "max_tokens"}


def openai_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """FMBench/TGI-style inference parameters translated to OpenAI request fields."""
    body: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in _DROPPED_PARAMETERS:
            continue
        body[_RENAMED_PARAMETERS.get(key, key)] = value
    return body


def classify_status(status: int) -> str:
    if status == 429:
        return "throttled"
    if 400 <= status < 500:
        return "http_4xx"
    return "http_5xx"


class OpenAIClient:
    """Sends one request per ``invoke`` over a shared connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "completions",
        model: str | None = None,
        stream: bool = True,
        timeout_s: float = 120.0,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        count_tokens: Any = None,
    ) -> None:
        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        self.url = root + ("/chat/completions" if api == "chat" else "/completions")
        self.api = api
        self.model = model
        self.stream = stream
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.extra_body = dict(extra_body or {})
        # Optional ``(text) -> int`` used when the server reports no usage.
        self.count_tokens = count_tokens
        self._session: aiohttp.ClientSession | None = None

    def _body(self, request: InferenceRequest) -> bytes:
        body: dict[str, Any] = {}
        if self.model is not None:
            body["model"] = self.model
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        body.update(openai_parameters(request.parameters))
        body.update(self.extra_body)
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        session = self._session_or_new()
        data = self._body(request)
        result = InferenceResult(sent_ns=now_ns(), last_byte_ns=0)
        try:
            async with session.post(self.url, data=data, headers=self.headers) as response:
                result.status = response.status
                if response.status >= 400:
                    result.error = classify_status(response.status)
                    result.error_detail = (await response.text())[:500]
                elif self.stream:
                    await self._read_stream(response, result)
                else:
                    self._read_body(await response.read(), result)
        except asyncio.TimeoutError:
            result.error, result.error_detail = "timeout", f"no complete response in {self.timeout.total} s"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            started = result.first_token_ns is not None or result.status is not None
            result.error = "stream_truncated" if started else "connection"
            result.error_detail = f"{type(exc).__name__}: {exc}"[:500]
        except aiohttp.ClientConnectionError as exc:
            result.error, result.error_detail = "connection", f"{type(exc).__name__}: {exc}"[:500]
        except aiohttp.ClientError as exc:
            result.error, result.error_detail = "client", f"{type(exc).__name__}: {exc}"[:500]
        result.last_byte_ns = now_ns()
        if not result.error:
            self._fill_tokens(request, result)
        return result

    async def _read_stream(self, response: aiohttp.ClientResponse, result: InferenceResult) -> None:
        texts: list[str] = []
        last_chunk_ns = 0
        done = False
        finished = False
        usage: dict[str, Any] | None = None
        async for raw in response.content:
            arrived = now_ns()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                result.error, result.error_detail = "bad_response", payload[:200].decode(errors="replace")
                return
            if isinstance(chunk, dict) and "error" in chunk:
                result.error = "http_5xx"
                result.error_detail = json.dumps(chunk["error"])[:500]
                return
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                text, reasoning = _choice_text(choice)
                if reasoning and result.first_reasoning_ns is None:
                    result.first_reasoning_ns = arrived
                if text:
                    if result.first_token_ns is None:
                        result.first_token_ns = arrived
                    else:
                        result.itl_us.append((arrived - last_chunk_ns) // 1000)
                    last_chunk_ns = arrived
                    texts.append(text)
                if choice.get("finish_reason"):
                    finished = True
        if not (done or finished):
            result.error = "stream_truncated"
            result.error_detail = "the stream ended before [DONE] or a finish_reason"
        result.text = "".join(texts)
        if usage:
            _apply_usage(usage, result)
        elif result.first_token_ns is not None:
            # Without usage, content chunks are the best count we have until the tokenizer.
            result.completion_tokens = len(result.itl_us) + 1
            result.token_source = "estimate"

    def _read_body(self, body: bytes, result: InferenceResult) -> None:
        try:
            data = json.loads(body)
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            result.error, result.error_detail = "bad_response", body[:200].decode(errors="replace")
            return
        text, _ = _choice_text(choice)
        result.text = text or ""
        if data.get("usage"):
            _apply_usage(data["usage"], result)

    def _fill_tokens(self, request: InferenceRequest, result: InferenceResult) -> None:
        if result.token_source == "server":
            return
        if self.count_tokens is not None:
            result.completion_tokens = self.count_tokens(result.text)
            result.prompt_tokens = request.prompt_tokens
            result.token_source = "tokenizer"
        elif result.prompt_tokens is None:
            result.prompt_tokens = request.prompt_tokens
            result.token_source = result.token_source or "estimate"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _choice_text(choice: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(content, reasoning) of one streamed or complete choice."""
    if "text" in choice:
        return choice.get("text"), None
    part = choice.get("delta") or choice.get("message") or {}
    return part.get("content"), part.get("reasoning_content") or part.get("reasoning")


def _apply_usage(usage: Mapping[str, Any], result: InferenceResult) -> None:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        result.prompt_tokens = prompt
        result.completion_tokens = completion
        result.token_source = "server"
