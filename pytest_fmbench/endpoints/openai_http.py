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
- the whole request of each payload is rendered once and reused;
- the transport (``http1.py``: asyncio protocols and llhttp) keeps connections alive, shared
  by every request of the client, and timestamps each read as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.http1 import Pool, Target, parse_headers, render_request

Api = Literal["completions", "chat"]

# FMBench parameter sets are written for TGI/DJL containers; these keys mean nothing to an
# OpenAI-compatible server and some servers reject unknown fields.
_DROPPED_PARAMETERS = frozenset(
    {"details", "do_sample", "return_full_text", "Content-type", "decoder_input_details",
     "truncate", "watermark", "stream"}
)
_RENAMED_PARAMETERS = {"max_new_tokens": "max_tokens"}
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


class OpenAIClient:
    """Sends one request per ``invoke`` over a shared connection pool.

    Picklable before and after use (the pool is not carried over), so ``load.processes`` can
    hand it to other processes; each opens its own pool on first use.
    """

    # Each request is bounded by ``timeout_s`` in the transport: the load
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
        # A query (e.g. Azure's ?api-version=) stays after the path.
        root, _, query = base_url.partition("?")
        root = root.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        self.url = root + ("/chat/completions" if api == "chat" else "/completions")
        if query:
            self.url += f"?{query}"
        self.target = Target(self.url)
        self.path = self.target.path + (f"?{self.target.query}" if self.target.query else "")
        self.api = api
        self.model = model
        self.stream = stream
        self.timeout_s = timeout_s
        self.headers = parse_headers({"Content-Type": "application/json", "Accept": "*/*",
                                      "User-Agent": "pytest-fmbench", **dict(headers or {})})
        self.extra_body = dict(extra_body or {})
        # Optional ``(text) -> int`` used when the server reports no usage.
        self.count_tokens = count_tokens
        # The response text is only needed for the tokenizer fallback; decoding it costs.
        self.keep_text = keep_text
        # [prefix, suffix] of the last content event shape seen (see _digest).
        self._shape: list[bytes] = [b"", b""]
        self._pool: Pool | None = None
        self._rendered: dict[int, tuple[InferenceRequest, bytes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_rendered"] = {}
        return state

    def __repr__(self) -> str:  # never the headers: they may carry an API key
        return f"OpenAIClient({self.url!r}, model={self.model!r}, stream={self.stream})"

    def _body(self, request: InferenceRequest) -> bytes:
        body: dict[str, Any] = {}
        if self.model is not None:
            body["model"] = self.model
        if self.api == "chat":
            body["messages"] = list(request.messages or ({"role": "user", "content": request.prompt},))
        elif request.messages:
            # A conversation on the completions API: its turns as one text, in order.
            body["prompt"] = "\n\n".join(m["content"] for m in request.messages)
        else:
            body["prompt"] = request.prompt
        body.update(openai_parameters(request.parameters))
        body.update(self.extra_body)
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def _request(self, request: InferenceRequest) -> bytes:
        """The rendered HTTP request of a payload, cached (payloads repeat across waves)."""
        cached = self._rendered.get(id(request))
        if cached is not None and cached[0] is request:
            return cached[1]
        raw = render_request("POST", self.target, self.path, self.headers, self._body(request))
        if len(self._rendered) < _BODY_CACHE_SIZE:
            # Keyed by identity and holding the request, so an id is never reused meanwhile.
            self._rendered[id(request)] = (request, raw)
        return raw

    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        pool = self._pool
        if pool is None:
            pool = self._pool = Pool(self.target)
        exchange = await pool.exchange(self._request(request), self.timeout_s,
                                       streamed=self.stream)
        result = InferenceResult(sent_ns=exchange.sent_ns, last_byte_ns=exchange.last_byte_ns,
                                 status=exchange.status, error=exchange.error,
                                 error_detail=exchange.error_detail, retries=exchange.retries)
        if result.error:
            if exchange.reads and result.status is not None and result.status < 400:
                _digest(exchange.reads, result, self._shape, False)  # timings up to the failure
                result.error, result.error_detail = exchange.error, exchange.error_detail
            return result
        assert result.status is not None
        if result.status >= 400:
            result.error = classify_status(result.status)
            result.error_detail = exchange.body[:500].decode(errors="replace")
        elif not self.stream:
            _read_body(exchange.body, result)
        elif exchange.reads:
            # A session's next turn carries this answer: its text is needed then too.
            _digest(exchange.reads, result, self._shape,
                    self.keep_text or self.count_tokens is not None or bool(request.followups))
        else:
            result.error, result.error_detail = "stream_truncated", "the stream was empty"
        if not result.error:
            self._fill_tokens(request, result)
        return result

    def _fill_tokens(self, request: InferenceRequest, result: InferenceResult) -> None:
        if result.token_source == "server":
            if self.count_tokens is not None:
                # Both counts, for the client-vs-server mismatch metrics (the server's stay
                # the record's counts). Reasoning text is not in ``text``: a reasoning
                # model's completion mismatch includes its reasoning tokens.
                result.client_prompt_tokens = request.prompt_tokens
                result.client_completion_tokens = self.count_tokens(result.text)
            return
        if self.count_tokens is not None:
            result.completion_tokens = self.count_tokens(result.text)
            result.prompt_tokens = request.prompt_tokens
            result.token_source = "tokenizer"
        elif result.prompt_tokens is None:
            result.prompt_tokens = request.prompt_tokens
            result.token_source = result.token_source or "estimate"

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None



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
    # Reads without a newline end no event: held and joined once with the read that does
    # (a 1 MB event over hundreds of reads is copied once, not once per read).
    held: list[bytes] = []
    crlf: bool | None = None
    for arrived, data in reads:
        if b"\n" not in data:
            held.append(data)
            continue
        if held:
            data = b"".join([pending, *held, data])
            held.clear()
        elif pending:
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
    if parts and _starts_thinking(parts):
        _split_thinking(parts, result)


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
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if isinstance(cached, int):
        result.cached_tokens = cached


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def _part_text(part: bytes | str) -> str:
    return part if isinstance(part, str) else _decode_raw([part])


def _starts_thinking(parts: list[bytes | str]) -> bool:
    """Whether the content begins with ``<think>`` (a reasoning model whose server does not
    split reasoning out): decided from the first few parts only."""
    head = ""
    for part in parts[:8]:
        head += _part_text(part)
        stripped = head.lstrip()
        if len(stripped) >= len(_THINK_OPEN) or not _THINK_OPEN.startswith(stripped):
            return stripped.startswith(_THINK_OPEN)
    return False


def _split_thinking(parts: list[bytes | str], result: InferenceResult) -> None:
    """``<think>...</think>`` before the answer: the first part is the first reasoning token,
    the first part with answer text after ``</think>`` the first answer token. Part arrival
    times come back from the first token and the gaps (``itl_us``: one per later part)."""
    if result.first_token_ns is None:
        return
    text = ""
    closed_at = -1
    for index, part in enumerate(parts):
        text += _part_text(part)
        if closed_at < 0:
            closed_at = text.find(_THINK_CLOSE)
            if closed_at < 0:
                continue
            closed_at += len(_THINK_CLOSE)
        if text[closed_at:].strip():
            result.first_reasoning_ns = result.first_token_ns
            result.first_token_ns += sum(result.itl_us[:index]) * 1000
            return
    # Reasoning only, no answer: no first answer token.
    result.first_reasoning_ns, result.first_token_ns = result.first_token_ns, None
