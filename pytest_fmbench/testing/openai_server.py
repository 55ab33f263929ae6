"""A small OpenAI-compatible server on loopback, with a fixed timing and injectable faults.

Used by the project's tests (and usable by users' own tests) wherever a real model server
would be too slow: it streams ``completion_tokens`` chunks after ``ttft_s``, one every
``token_delay_s``, and reports usage in its last chunk like vLLM does. Faults:

- ``throttle``: HTTP 429;  ``error_5xx``: HTTP 503;  ``error_4xx``: HTTP 400
- ``truncate``: the stream stops half-way without ``[DONE]`` and the connection closes
- ``stall``: the stream sends one chunk, then hangs
- ``garbage``: a chunk that is not JSON
- ``drop``: the connection closes before any response

``reply(model, prompt) -> text`` scripts the answer text (a deterministic judge, a scripted
candidate: ``pytest_fmbench.testing.judges``); usage is then prompt bytes // 4 and one
completion token per word. ``stats.by_model`` counts requests per ``model``.

``fault_every=N`` applies the fault to every N-th request only (1 = all).

Generation length and workloads (all off by default, so the server behaves as before):

- ``eos_after=N``: the "model" meets its end-of-sequence token after N tokens, unless the
  request forces the length like vLLM/SGLang allow: ``ignore_eos: true`` generates exactly
  ``max_tokens``, ``min_tokens: M`` at least M;
- ``count_prompt``: a ``(text) -> int`` that counts the prompt for usage (a real tokenizer);
  default: whitespace-separated words;
- ``prefix_cache_block=B``: an automatic prefix cache of B-token blocks (tokens: the words
  of the prompt): usage reports ``prompt_tokens_details.cached_tokens``, the longest run of
  whole blocks an earlier request already sent;
- ``reasoning_tokens=R``: R reasoning chunks before the answer, as ``reasoning_content``
  deltas (chat; ``reasoning_style="field"``) or as ``<think>...</think>`` text
  (``reasoning_style="think"``, both APIs); they count against ``max_tokens`` and in
  ``completion_tokens``, as in vLLM (the answer gets at least one token).
A server of known capacity: with ``slots=K`` and ``service_time_s=S`` at most K requests are
served at once, each for S seconds (its chunks spread evenly over S, the last at S, timed
against absolute deadlines so sleeps never add up); the others wait, first come first
served, for a free slot. Its most throughput is K/S requests/s.

Auth, like a real gateway: ``api_key`` requires ``Authorization: Bearer <key>`` (vLLM's
``--api-key``), ``required_headers`` and ``required_query`` require those exact values;
a request without them gets HTTP 401.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pytest_fmbench.testing.background import BackgroundServer

FAULTS = ("throttle", "error_5xx", "error_4xx", "truncate", "stall", "garbage", "drop")


@dataclass
class ServerBehaviour:
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    completion_tokens: int = 8
    usage: bool = True
    fault: str | None = None
    fault_every: int = 1
    stall_s: float = 30.0
    api_key: str | None = None
    required_headers: dict[str, str] = field(default_factory=dict)
    required_query: dict[str, str] = field(default_factory=dict)
    reply: Callable[[str, str], str] | None = None
    eos_after: int | None = None
    count_prompt: Callable[[str], int] | None = None
    prefix_cache_block: int | None = None
    reasoning_tokens: int = 0
    reasoning_style: str = "field"

    def answer_tokens(self, body: dict[str, Any]) -> int:
        """How many answer tokens this request gets (max_tokens, eos_after, forcing)."""
        tokens = int(body.get("max_tokens") or self.completion_tokens)
        if self.eos_after is None or body.get("ignore_eos"):
            return tokens
        return min(tokens, max(self.eos_after, int(body.get("min_tokens") or 0)))
    # A server of known capacity (see the module docstring): K slots, S seconds each.
    slots: int | None = None
    service_time_s: float = 0.1

    def authorized(self, headers: Any, query: Any) -> bool:
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return False
        return all(headers.get(k) == v for k, v in self.required_headers.items()) and all(
            query.get(k) == v for k, v in self.required_query.items())


@dataclass
class ServerStats:
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # The request headers, kept with the bodies (``keep_bodies``).
    headers: list[dict[str, str]] = field(default_factory=list)
    by_model: Counter[str] = field(default_factory=Counter)


class FakeOpenAIServer(BackgroundServer):
    """Runs in a background thread; ``with FakeOpenAIServer(...) as server: server.url``."""

    thread_name = "fake-openai"

    def __init__(self, behaviour: ServerBehaviour | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, keep_bodies: bool = True) -> None:
        self.behaviour = behaviour or ServerBehaviour()
        self.stats = ServerStats()
        super().__init__(host=host, port=port)
        self.keep_bodies = keep_bodies
        self._cached_blocks: set[int] = set()
        self._slots: asyncio.Semaphore | None = None

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self._health)
        router.add_get("/v1/models", self._models)
        router.add_post("/v1/completions", self._complete)
        router.add_post("/v1/chat/completions", self._complete)

    async def _shutdown(self) -> None:
        await super()._shutdown()
        # Stalled handlers outlive the runner's grace period: end them before the loop stops.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        # What vLLM, SGLang and llama.cpp answer once the model is loaded (a readiness probe).
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.behaviour.slots:
                if self._slots is None:
                    self._slots = asyncio.Semaphore(self.behaviour.slots)
                async with self._slots:
                    return await self._serve_in_slot(request)
            return await self._respond(request)
        except ConnectionResetError:  # the client went away (timeouts, truncation tests)
            return web.Response(status=499)

    async def _serve_in_slot(self, request: web.Request) -> web.StreamResponse:
        """One request in a slot: S seconds, its chunks at S/n, 2S/n, ..., S."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        body = await request.json()
        self.stats.requests += 1
        chat = request.path.endswith("/chat/completions")
        tokens = max(1, int(body.get("max_tokens") or self.behaviour.completion_tokens))
        service = self.behaviour.service_time_s
        if not body.get("stream"):
            await asyncio.sleep(max(0.0, start + service - loop.time()))
            return web.json_response(_complete_body(chat, tokens, self.behaviour.usage))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(tokens):
            await asyncio.sleep(max(0.0, start + service * (index + 1) / tokens - loop.time()))
            await response.write(_sse(_chunk(chat, index, index == tokens - 1)))
        if self.behaviour.usage:
            await response.write(_sse({"choices": [], "usage": self._usage(body, tokens)}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.stats.requests += 1
        self.stats.by_model[str(body.get("model", ""))] += 1
        if self.keep_bodies:
            self.stats.bodies.append(body)
            self.stats.headers.append(dict(request.headers))
        b = self.behaviour
        if not b.authorized(request.headers, request.query):
            return web.json_response({"error": {"message": "unauthorized", "code": 401}}, status=401)
        fault = b.fault if b.fault and self.stats.requests % max(1, b.fault_every) == 0 else None
        chat = request.path.endswith("/chat/completions")
        tokens = b.answer_tokens(body)
        if fault == "drop":
            request.transport.close()  # type: ignore[union-attr]
            raise asyncio.CancelledError
        if fault in ("throttle", "error_5xx", "error_4xx"):
            status = {"throttle": 429, "error_5xx": 503, "error_4xx": 400}[fault]
            return web.json_response({"error": {"message": fault, "code": status}}, status=status)
        if b.reply is not None:
            return await _scripted(request, body, chat, b.reply)
        if not body.get("stream"):
            await asyncio.sleep(b.ttft_s + b.token_delay_s * max(tokens - 1, 0))
            return web.json_response(_complete_body(chat, tokens, b.usage))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(b.ttft_s)
        usage = self._usage(body, tokens)
        # Reasoning counts against max_tokens, as in vLLM: the answer gets the rest.
        reasoning = _reasoning_pieces(chat, b, tokens)
        tokens -= len(reasoning)
        for piece in reasoning:
            await response.write(_sse(piece))
            await asyncio.sleep(b.token_delay_s)
        for index in range(tokens):
            if index:
                await asyncio.sleep(b.token_delay_s)
            if fault == "truncate" and index == tokens // 2:
                request.transport.close()  # type: ignore[union-attr]
                return response
            if fault == "garbage" and index == 1:
                await response.write(b"data: {not json\n\n")
                continue
            await response.write(_sse(_chunk(chat, index, index == tokens - 1)))
            if fault == "stall":
                await asyncio.sleep(b.stall_s)
        if b.usage:
            await response.write(_sse({"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _usage(self, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        b = self.behaviour
        prompt = _prompt_text(body)
        usage: dict[str, Any] = {
            "prompt_tokens": b.count_prompt(prompt) if b.count_prompt else max(1, len(prompt.split())),
            "completion_tokens": tokens}
        if b.prefix_cache_block:
            usage["prompt_tokens_details"] = {"cached_tokens": self._cache(prompt.split())}
        return usage

    def _cache(self, words: list[str]) -> int:
        """Tokens of ``words`` in whole blocks an earlier prompt already had (then cached)."""
        block = self.behaviour.prefix_cache_block or 1
        cached, hit = 0, True
        for end in range(block, len(words) + 1, block):
            key = hash(tuple(words[:end]))
            if hit and key in self._cached_blocks:
                cached = end
            else:
                hit = False
                self._cached_blocks.add(key)
        return cached


def _prompt_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


async def _scripted(request: web.Request, body: dict[str, Any], chat: bool,
                    reply: Callable[[str, str], str]) -> web.StreamResponse:
    prompt = _prompt_text(body)
    text = reply(str(body.get("model", "")), prompt)
    pieces = re.findall(r"\s*\S+", text) or [text]
    usage = {"prompt_tokens": max(1, len(prompt.encode()) // 4), "completion_tokens": len(pieces)}
    if not body.get("stream"):
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                  else {"index": 0, "text": text})
        return web.json_response({"choices": [{**choice, "finish_reason": "stop"}], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index, piece in enumerate(pieces):
        finish = "stop" if index == len(pieces) - 1 else None
        choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
        await response.write(_sse({"choices": [{**choice, "finish_reason": finish}]}))
    await response.write(_sse({"choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _reasoning_pieces(chat: bool, b: ServerBehaviour, tokens: int) -> list[dict[str, Any]]:
    """The reasoning chunks of one answer of ``tokens`` tokens (at least one is answer)."""
    count = min(b.reasoning_tokens, tokens - 1)
    if count < (2 if b.reasoning_style == "think" else 1):
        return []
    if b.reasoning_style == "think":
        texts = ["<think>", *(f" r{i}" for i in range(count - 2)), "</think>"]
        return [({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} if chat
                 else {"choices": [{"index": 0, "text": t, "finish_reason": None}]}) for t in texts]
    return [{"choices": [{"index": 0, "delta": {"reasoning_content": f" r{i}"}, "finish_reason": None}]}
            for i in range(count)]


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(chat: bool, index: int, last: bool) -> dict[str, Any]:
    finish = "length" if last else None
    if chat:
        return {"choices": [{"index": 0, "delta": {"content": f" t{index}"}, "finish_reason": finish}]}
    return {"choices": [{"index": 0, "text": f" t{index}", "finish_reason": finish}]}


def _complete_body(chat: bool, tokens: int, usage: bool) -> dict[str, Any]:
    text = "".join(f" t{i}" for i in range(tokens))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
              else {"index": 0, "text": text})
    body: dict[str, Any] = {"choices": [{**choice, "finish_reason": "length"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 0, "completion_tokens": tokens}
    return body


def main(argv: list[str] | None = None) -> None:
    """``python -m pytest_fmbench.testing.openai_server [--port N] [--ttft S] ...``: serve until
    killed (a stand-in for ``vllm serve`` in ``openai.deploy.command``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--fault", choices=FAULTS, default=None)
    parser.add_argument("--fault-every", type=int, default=1)
    parser.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    parser.add_argument("--require-header", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--require-query", action="append", default=[], metavar="KEY=VALUE")
    # Accepted like vLLM's (a container image's entry point gets `--model ID` appended).
    parser.add_argument("--model", default=None, help="the model id (only logged)")
    parser.add_argument("--slots", type=int, default=None,
                        help="serve at most this many requests at once (others queue)")
    parser.add_argument("--service-time", type=float, default=0.1,
                        help="with --slots: seconds each request holds its slot")
    args = parser.parse_args(argv)
    behaviour = ServerBehaviour(ttft_s=args.ttft, token_delay_s=args.token_delay,
                                fault=args.fault, fault_every=args.fault_every,
                                api_key=args.api_key,
                                required_headers=dict(p.split("=", 1) for p in args.require_header),
                                required_query=dict(p.split("=", 1) for p in args.require_query),
                                slots=args.slots, service_time_s=args.service_time)
    # Like vLLM, which logs its non-default arguments (secrets included) at start.
    # (on stderr: the first line of stdout is the URL, for scripts that read it)
    print(f"non-default args: {vars(args)}", file=sys.stderr, flush=True)
    with FakeOpenAIServer(behaviour, host=args.host, port=args.port, keep_bodies=False) as server:
        print(server.url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ...openai_server
    main()
