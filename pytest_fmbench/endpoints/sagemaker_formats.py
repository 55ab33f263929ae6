"""Request and response formats of SageMaker serving containers, in a small registry.

- ``tgi``: Hugging Face TGI. ``{"inputs", "parameters", "stream"}``; replies
  ``[{"generated_text", "details"?}]``; streams ``data:{"token": {...}, ...}`` lines, the last
  with ``generated_text`` and, when ``parameters.details`` is true, ``details.generated_tokens``.
- ``lmi``: LMI / DJL Serving. Same request; replies ``{"generated_text"}`` (or a list);
  streams JSON lines ``{"token": {...}}`` (or the older ``{"outputs": [...]}``).
- ``messages``: OpenAI-style chat (vLLM, SGLang, LMI and TGI Messages API):
  ``{"messages", "max_tokens", ...}``; SSE ``data:`` chunks with ``usage`` when asked.

A format turns an ``InferenceRequest`` into a JSON body and reads the reply (whole or
streamed in ``PayloadPart`` pieces, which may split lines anywhere). Register more with
``register_format`` (e.g. from a conftest or a plugin's import).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.openai_http import openai_parameters


class FormatError(ValueError):
    """The reply is not what the format expects (→ ``bad_response``)."""


class ServerStreamError(Exception):
    """The server reported an error inside the stream (→ ``http_5xx``)."""


@dataclass
class Completion:
    """What a reply says: its text and, when the server reports them, token counts."""

    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finished: bool = False
    chunks: list[str] = field(default_factory=list)


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> list[str]:
        """Content pieces in this part of the stream (possibly none)."""
        ...

    def finish(self) -> Completion: ...


class PayloadFormat(Protocol):
    name: str

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]: ...

    def parse(self, data: bytes) -> Completion: ...

    def decoder(self) -> StreamDecoder: ...


_FORMATS: dict[str, Callable[[], PayloadFormat]] = {}


def register_format(name: str, factory: Callable[[], PayloadFormat]) -> None:
    _FORMATS[name] = factory


def format_names() -> list[str]:
    return sorted(_FORMATS)


def get_format(name: str) -> PayloadFormat:
    try:
        return _FORMATS[name]()
    except KeyError:
        raise KeyError(name) from None


def guess_format(container_type: str | None, image_uri: str | None) -> str:
    """``container_type`` when it names a format; else from the image; else ``tgi``."""
    hint = (container_type or "").lower()
    aliases = {"tgi": "tgi", "hf": "tgi", "huggingface": "tgi", "djl": "lmi", "lmi": "lmi",
               "djl-lmi": "lmi", "deepspeed": "lmi", "vllm": "messages", "messages": "messages",
               "openai": "messages", "sglang": "messages"}
    if hint in _FORMATS:
        return hint
    if hint in aliases:
        return aliases[hint]
    image = (image_uri or "").lower()
    if "tgi" in image:
        return "tgi"
    if "djl" in image or "lmi" in image:
        return "lmi"
    if "vllm" in image or "sglang" in image:
        return "messages"
    return "tgi"


# -- line-oriented stream decoding -------------------------------------------------------

class LineDecoder:
    """Buffers PayloadPart bytes into lines; ``data:`` prefixes and blank lines are skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self.result = Completion()

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        pieces: list[str] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            pieces += self._line(line)
        return pieces

    def finish(self) -> Completion:
        if self._buffer.strip():
            line, self._buffer = self._buffer, b""
            self._line(line)
        self.result.text = "".join(self.result.chunks)
        return self.result

    def _line(self, raw: bytes) -> list[str]:
        line = raw.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line or line == b"[DONE]":
            if line == b"[DONE]":
                self.result.finished = True
            return []
        try:
            data = json.loads(line)
        except ValueError:
            raise FormatError(f"stream line is not JSON: {line[:200]!r}") from None
        if not isinstance(data, dict):
            raise FormatError(f"stream line is not a JSON object: {line[:200]!r}")
        if data.get("error"):
            raise ServerStreamError(json.dumps(data["error"])[:500])
        piece = self.on_event(data)
        if piece:
            self.result.chunks.append(piece)
            return [piece]
        return []

    def on_event(self, data: dict[str, Any]) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


class TokenLineDecoder(LineDecoder):
    """TGI and LMI token events (``{"token": {"text"}, "generated_text", "details"}``)."""

    def on_event(self, data: dict[str, Any]) -> str | None:
        piece: str | None = None
        token = data.get("token")
        if isinstance(token, dict):
            if not token.get("special"):
                piece = token.get("text") or None
        elif isinstance(data.get("outputs"), list):  # older LMI streams
            piece = "".join(str(o) for o in data["outputs"]) or None
        if data.get("generated_text") is not None:
            self.result.finished = True
        details = data.get("details")
        if isinstance(details, dict):
            generated = details.get("generated_tokens")
            if isinstance(generated, int):
                self.result.completion_tokens = generated
            self.result.finished = True
        return piece


class ChatLineDecoder(LineDecoder):
    """OpenAI chat-completion chunks."""

    def on_event(self, data: dict[str, Any]) -> str | None:
        usage = data.get("usage")
        if isinstance(usage, dict):
            _apply_openai_usage(usage, self.result)
        piece = None
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                piece = (piece or "") + delta["content"]
            if choice.get("finish_reason"):
                self.result.finished = True
        return piece


def _apply_openai_usage(usage: dict[str, Any], result: Completion) -> None:
    if isinstance(usage.get("completion_tokens"), int):
        result.completion_tokens = usage["completion_tokens"]
    if isinstance(usage.get("prompt_tokens"), int):
        result.prompt_tokens = usage["prompt_tokens"]


# -- the formats -------------------------------------------------------------------------

def _container_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k != "stream"}


class TgiFormat:
    name = "tgi"

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": request.prompt,
                                "parameters": _container_parameters(request.parameters)}
        if stream:
            body["stream"] = True
        return body

    def parse(self, data: bytes) -> Completion:
        try:
            reply = json.loads(data)
        except ValueError:
            raise FormatError(f"reply is not JSON: {data[:200]!r}") from None
        if isinstance(reply, list):
            if not reply:
                raise FormatError("reply is an empty list")
            reply = reply[0]
        if not isinstance(reply, dict):
            raise FormatError(f"unexpected reply: {data[:200]!r}")
        if "error" in reply and "generated_text" not in reply:
            raise ServerStreamError(str(reply["error"])[:500])
        text = reply.get("generated_text")
        if text is None and isinstance(reply.get("outputs"), list):
            text = "".join(str(o) for o in reply["outputs"])
        if text is None:
            raise FormatError(f"no generated_text in the reply: {data[:200]!r}")
        result = Completion(text=str(text), finished=True)
        details = reply.get("details")
        if isinstance(details, dict) and isinstance(details.get("generated_tokens"), int):
            result.completion_tokens = details["generated_tokens"]
        return result

    def decoder(self) -> StreamDecoder:
        return TokenLineDecoder()


class LmiFormat(TgiFormat):
    """LMI/DJL: TGI's request shape; replies an object (or list), streams JSON lines."""

    name = "lmi"


class MessagesFormat:
    name = "messages"

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": request.prompt}]}
        body.update(openai_parameters(request.parameters))
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def parse(self, data: bytes) -> Completion:
        try:
            reply = json.loads(data)
            message = reply["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise FormatError(f"not a chat completion: {data[:200]!r}") from None
        result = Completion(text=str(message.get("content") or ""), finished=True)
        if isinstance(reply.get("usage"), dict):
            _apply_openai_usage(reply["usage"], result)
        return result

    def decoder(self) -> StreamDecoder:
        return ChatLineDecoder()


register_format("tgi", TgiFormat)
register_format("lmi", LmiFormat)
register_format("messages", MessagesFormat)


# -- FMBench's inference_spec on top of a format --------------------------------------------

# invoke_endpoint arguments FMBench's split_input_and_parameters passes from the parameters.
INVOKE_ARGUMENTS = ("ContentType", "Accept", "CustomAttributes", "TargetModel", "InferenceId")


def request_body(fmt: PayloadFormat, request: InferenceRequest, *, stream: bool,
                 split_input_and_parameters: bool = False) -> tuple[bytes, dict[str, str]]:
    """The invoke_endpoint body and extra arguments of one request.

    FMBench's ``split_input_and_parameters: yes`` (its BERT-style configs) sends the prompt
    alone as JSON text and the parameters as invoke_endpoint arguments (``ContentType``,
    ``Accept``); parameters that are not arguments are not sent, as in FMBench.
    """
    if not split_input_and_parameters:
        return json.dumps(fmt.body(request, stream=stream)).encode(), {}
    arguments = {key: str(request.parameters[key]) for key in INVOKE_ARGUMENTS
                 if key in request.parameters}
    return json.dumps(request.prompt).encode(), arguments


def with_stop_token(fmt: PayloadFormat, stop_token: str | None) -> PayloadFormat:
    """``fmt`` reading replies as FMBench does with ``inference_spec.stop_token``: the reply
    ends at the stop token, which is not content (no TTFT/ITL event, not in the text)."""
    return fmt if not stop_token else _StopTokenFormat(fmt, stop_token)


def _before_stop(text: str, stop_token: str) -> str:
    return text.split(stop_token, 1)[0]


class _StopTokenFormat:
    def __init__(self, inner: PayloadFormat, stop_token: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.stop_token = stop_token

    def body(self, request: InferenceRequest, *, stream: bool) -> dict[str, Any]:
        return self.inner.body(request, stream=stream)

    def parse(self, data: bytes) -> Completion:
        completion = self.inner.parse(data)
        completion.text = _before_stop(completion.text, self.stop_token)
        return completion

    def decoder(self) -> StreamDecoder:
        return _StopTokenDecoder(self.inner.decoder(), self.stop_token)


class _StopTokenDecoder:
    def __init__(self, inner: StreamDecoder, stop_token: str) -> None:
        self.inner = inner
        self.stop_token = stop_token
        self.stopped = False

    def feed(self, data: bytes) -> list[str]:
        pieces = []
        for piece in self.inner.feed(data):
            if self.stopped or piece.strip() == self.stop_token:
                self.stopped = True
                continue
            pieces.append(piece)
        return pieces

    def finish(self) -> Completion:
        completion = self.inner.finish()
        completion.text = _before_stop(completion.text, self.stop_token)
        return completion
