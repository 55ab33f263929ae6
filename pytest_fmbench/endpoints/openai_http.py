"""OpenAI-compatible HTTP client (``/v1/completions``, ``/v1/chat/completions``), streamed.

Written once and used by every backend that speaks this API (local, openai). The client must
never be the bottleneck, so the hot path does only what the record needs:

- each network read is timestamped as it arrives; every SSE event in it shares that time;
- an event is parsed as JSON only when it may matter (the first content chunk, the finish
  chunk, usage, errors, reasoning, anything unusual). From the first content chunk it parses,
  the client learns the chunk's *shape*: the bytes before and after the text. A later event
  with the same prefix and suffix is a content chunk of the same request, recognised with two
  byte comparisons (~0.3 µs instead of ~3 µs for ``json.loads``); its raw text is kept and
  decoded once, after the last byte;
- the request body of each payload is encoded once and reused;
- the connection pool (aiohttp) is shared by every request of the client, and the stream is
  read to its end so connections are reused.
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
# How long to wait for a stream's end after [DONE] before giving its connection up.
_DRAIN_S = 2.0
_BODY_CACHE_SIZE = 65536


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


class _TimedRequest(aiohttp.ClientRequest):
    """Notes when the request's bytes are handed to the transport (METRICS.md: ``sent``).

    aiohttp writes the body (coalesced with the headers) from a task of its own; on Python
    3.11 that task runs one loop iteration after ``post()`` started, later still when the
    loop is busy. Timestamping there keeps that wait out of latency and in the client's
    dispatch delay, where it belongs.
    """

    sent_ns = 0

    async def write_bytes(self, *args: Any, **kwargs: Any) -> None:
        self.sent_ns = now_ns()
        await super().write_bytes(*args, **kwargs)

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        response = await super().send(conn)
        response._fmbench_request = self  # type: ignore[attr-defined]
        return response


def _sent_ns(response: aiohttp.ClientResponse, fallback: int) -> int:
    request = getattr(response, "_fmbench_request", None)
    return getattr(request, "sent_ns", 0) or fallback


class OpenAIClient:
    """Sends one request per ``invoke`` over a shared connection pool.

    Picklable before and after use (the pool is not carried over), so ``load.processes`` can
    hand it to other processes; each opens its own pool on first use.
    """

    # Each request is bounded by ``timeout_s`` here (aiohttp's total timeout): the load
    # engine needs no timer of its own per request.
    enforces_timeout = True

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
        keep_text: bool = True,
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
        # The response text is only needed for the tokenizer fallback; decoding it costs.
        self.keep_text = keep_text
        # [prefix, suffix] of the last content event shape seen (see _read_stream).
        self._shape: list[bytes] = [b"", b""]
        self._session: aiohttp.ClientSession | None = None
        self._bodies: dict[int, tuple[InferenceRequest, bytes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        state["_bodies"] = {}
        return state

    def __repr__(self) -> str:  # never the headers: they may carry an API key
        return f"OpenAIClient({self.url!r}, model={self.model!r}, stream={self.stream})"

    def _body(self, request: InferenceRequest) -> bytes:
        cached = self._bodies.get(id(request))
        if cached is not None and cached[0] is request:
            return cached[1]
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
        data = json.dumps(body).encode()
        if len(self._bodies) < _BODY_CACHE_SIZE:
            # Keyed by identity and holding the request, so an id is never reused meanwhile.
            self._bodies[id(request)] = (request, data)
        return data

    def _session_or_new(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            session = self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, request_class=_TimedRequest)
        return session

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        session = self._session_or_new()
        data = self._body(request)
        result = InferenceResult(sent_ns=now_ns(), last_byte_ns=0)
        # (arrival ns, bytes) of each read of a streamed body; parsed once it has ended.
        reads: list[tuple[int, bytes]] = []
        body = b""
        try:
            async with session.post(self.url, data=data, headers=self.headers) as response:
                result.sent_ns = _sent_ns(response, result.sent_ns)
                result.status = response.status
                if response.status >= 400:
                    result.error = classify_status(response.status)
                    result.error_detail = (await response.text())[:500]
                elif self.stream:
                    await _read_stream(response, reads)
                else:
                    body = await response.read()
                    result.last_byte_ns = now_ns()
        except TimeoutError:
            result.error, result.error_detail = "timeout", f"no complete response in {self.timeout.total} s"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            started = bool(reads) or result.status is not None
            result.error = "stream_truncated" if started else "connection"
            result.error_detail = f"{type(exc).__name__}: {exc}"[:500]
        except aiohttp.ClientConnectionError as exc:
            result.error, result.error_detail = "connection", f"{type(exc).__name__}: {exc}"[:500]
        except aiohttp.ClientError as exc:
            result.error, result.error_detail = "client", f"{type(exc).__name__}: {exc}"[:500]
        if result.error:
            result.last_byte_ns = now_ns()
        # Every response whose last bytes came in the same loop iteration takes its
        # timestamps before any of them is parsed, recorded or followed by a new request.
        await asyncio.sleep(0)
        if reads:
            failure = result.error, result.error_detail
            _digest(reads, result, self._shape, self.keep_text or self.count_tokens is not None)
            if failure[0]:  # the transport's verdict (timeout, truncation) stands
                result.error, result.error_detail = failure
        elif not result.error and self.stream:
            result.error, result.error_detail = "stream_truncated", "the stream was empty"
            result.last_byte_ns = now_ns()
        elif not result.error:
            _read_body(body, result)
        if not result.error:
            self._fill_tokens(request, result)
        return result

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


_DONE_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n")


async def _read_stream(response: aiohttp.ClientResponse, reads: list[tuple[int, bytes]]) -> None:
    """Read a streamed body to its end, each read timestamped as it arrives: nothing else."""
    content = response.content
    readany = content.readany
    append = reads.append
    while True:
        data = await readany()
        if not data:
            return
        append((now_ns(), data))
        if data.endswith(_DONE_ENDS) and not content.at_eof():
            await _drain(content)  # a server that keeps the stream open after [DONE]
            return


def _digest(reads: list[tuple[int, bytes]], result: InferenceResult, shape: list[bytes],
            keep_text: bool) -> None:
    """Parse the SSE events of a finished stream into the result, with their arrival times.

    ``shape`` is ``[prefix, suffix]`` of a content event (``data: `` included) learnt from an
    earlier one, possibly of an earlier request of this client; it is updated in place.
    """
    if not result.last_byte_ns:
        result.last_byte_ns = reads[-1][0]
    itl = result.itl_us
    itl_append = itl.append
    # Content pieces: the raw JSON string body of events matched by shape (bytes, decoded
    # once at the end), or the text of parsed events (str).
    parts: list[bytes | str] = []
    parts_append = parts.append
    usage: Mapping[str, Any] | None = None
    finished = done = False
    last = 0
    prefix, suffix = shape
    shape_len = len(prefix) + len(suffix) if prefix else 1 << 30
    head, tail = len(prefix), -len(suffix)
    pending = b""
    crlf: bool | None = None
    for arrived, data in reads:
        if pending:
            data = pending + data
        if crlf is None and b"\n" in data:
            crlf = b"\r\n" in data
        if crlf:  # (pending may end in a \r whose \n came in this read)
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        pending = events.pop()
        for event in events:
            if len(event) > shape_len and event.startswith(prefix) and event.endswith(suffix):
                # A content event shaped like an earlier parsed one: the hot path.
                if last:
                    itl_append((arrived - last) // 1000)
                else:
                    result.first_token_ns = arrived
                last = arrived
                parts_append(event[head:tail])
                continue
            payload = _event_data(event)
            if payload is None:
                continue  # comments, event:/id:/retry: fields only
            if payload == b"[DONE]":
                done = True
                continue
            chunk = _parse_json(payload)
            if not isinstance(chunk, dict):
                result.error, result.error_detail = "bad_response", payload[:200].decode(errors="replace")
                return
            if "error" in chunk:
                result.error = "http_5xx"
                result.error_detail = json.dumps(chunk["error"])[:500]
                return
            chunk_usage = chunk.get("usage")
            usage = chunk_usage or usage
            choices = chunk.get("choices") or ()
            plain_text = len(choices) == 1 and not chunk_usage
            for choice in choices:
                text, reasoning = _choice_text(choice)
                if reasoning:
                    plain_text = False
                    if result.first_reasoning_ns is None:
                        result.first_reasoning_ns = arrived
                if text:
                    if last:
                        itl_append((arrived - last) // 1000)
                    else:
                        result.first_token_ns = arrived
                    last = arrived
                    parts_append(text)
                else:
                    plain_text = False
                if choice.get("finish_reason"):
                    finished = True
                    plain_text = False
            if plain_text and event.startswith(b"data:"):
                # Learn this content event's shape: later ones like it skip the JSON parser.
                learnt = _content_shape(event)
                if learnt is not None:
                    prefix, suffix = shape[0], shape[1] = learnt
                    shape_len = len(prefix) + len(suffix)
                    head, tail = len(prefix), -len(suffix)
    if not (done or finished) and not result.error:
        result.error = "stream_truncated"
        result.error_detail = "the stream ended before [DONE] or a finish_reason"
    if result.error:
        return  # no token counts for a failed request
    if usage:
        _apply_usage(usage, result)
    elif result.first_token_ns is not None:
        # Without usage, content chunks are the best count we have until the tokenizer.
        result.completion_tokens = len(itl) + 1
        result.token_source = "estimate"
    if keep_text or not usage:
        result.text = _join_text(parts)


_RAW_DECODE = json.JSONDecoder().raw_decode


def _parse_json(payload: bytes) -> Any:
    """``json.loads`` for one event, minus its encoding detection; None if not JSON."""
    try:
        text = payload.decode()
        value, end = _RAW_DECODE(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if end == len(text) else None


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its ``data:`` lines joined), or None if it has none."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].strip()
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def _drain(content: aiohttp.StreamReader) -> None:
    """After [DONE], read to the end so the connection is reused; give up after a while."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass  # the response is complete; only this connection is lost


def _content_shape(event: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, suffix) around the one text value of a content event, or None if unclear."""
    keys = [k for k in (b'"text":', b'"content":') if k in event]
    if len(keys) != 1 or event.count(keys[0]) != 1 or b"\n" in event:
        return None
    start = event.index(keys[0]) + len(keys[0])
    while event[start:start + 1] == b" ":
        start += 1
    if event[start:start + 1] != b'"':
        return None
    start += 1
    end = start
    while True:
        end = event.find(b'"', end)
        if end < 0:
            return None
        backslashes = 0
        while event[end - 1 - backslashes] == 0x5C:  # "\\"
            backslashes += 1
        if backslashes % 2 == 0:
            break
        end += 1
    if end == start:
        return None
    return event[:start], event[end:]


def _join_text(parts: list[bytes | str]) -> str:
    out: list[str] = []
    raw: list[bytes] = []
    for part in parts:
        if isinstance(part, bytes):
            raw.append(part)
            continue
        if raw:
            out.append(_decode_raw(raw))
            raw = []
        out.append(part)
    if raw:
        out.append(_decode_raw(raw))
    return "".join(out)


def _decode_raw(raw: list[bytes]) -> str:
    try:
        text: str = json.loads(b'"' + b"".join(raw) + b'"')
        return text
    except ValueError:
        return b"".join(raw).decode(errors="replace")


def _read_body(body: bytes, result: InferenceResult) -> None:
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
