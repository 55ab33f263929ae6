"""An OpenAI-compatible server with K slots and a queue, exposing vLLM-named /metrics.

A stand-in for a serving engine whose Prometheus metrics follow its true state: at most
``slots`` requests run at once, each for ``service_s`` (``completion_tokens`` streamed chunks,
evenly spaced); the others wait in a FIFO queue. ``/metrics`` (built with the Prometheus client
library) exposes ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc`` (running / slots), ``vllm:num_preemptions_total`` (always 0) and
the ``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total`` counters. Every change of
(running, waiting) is kept with its time on the run's timeline (``history``), so a test can
compare a scraped series with the server's own counts.

``python -m pytest_fmbench.testing.prometheus_server --slots 4 --service 0.2`` serves until
killed and prints its URL (for a server in its own process, e.g. the perf suite).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import time
from typing import Any

from aiohttp import web

from pytest_fmbench.clock import now_ns
from pytest_fmbench.testing.background import BackgroundServer


class SlotServer(BackgroundServer):
    """Runs in a background thread; ``with SlotServer(slots=2) as server: server.url``."""

    thread_name = "fake-slot-server"

    def __init__(self, *, slots: int = 4, service_s: float = 0.2, completion_tokens: int = 8,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.slots = slots
        self.service_s = service_s
        self.completion_tokens = completion_tokens
        super().__init__(host=host, port=port)
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self._running_gauge = Gauge("vllm:num_requests_running", "Requests running", labels,
                                    registry=self.registry).labels("fake")
        self._waiting_gauge = Gauge("vllm:num_requests_waiting", "Requests waiting", labels,
                                    registry=self.registry).labels("fake")
        self._kv_gauge = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage", labels,
                               registry=self.registry).labels("fake")
        self._preemptions = Counter("vllm:num_preemptions", "Preemptions", labels,
                                    registry=self.registry).labels("fake")
        self._prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens", labels,
                                      registry=self.registry).labels("fake")
        self._generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", labels,
                                          registry=self.registry).labels("fake")
        self.running = 0
        self.waiting = 0
        self.requests = 0
        # (t_ns, running, waiting) after each change, on the run's timeline.
        self.changes: list[tuple[int, int, int]] = [(now_ns(), 0, 0)]
        self._semaphore: asyncio.Semaphore | None = None

    # -- the server's own counts ------------------------------------------------------------
    def _changed(self) -> None:
        self._running_gauge.set(self.running)
        self._waiting_gauge.set(self.waiting)
        self._kv_gauge.set(self.running / self.slots)
        self.changes.append((now_ns(), self.running, self.waiting))

    def states_between(self, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
        """Every (running, waiting) the server was in at some instant of [start, end]."""
        times = [t for t, _, _ in self.changes]
        first = max(0, bisect.bisect_right(times, start_ns) - 1)
        last = bisect.bisect_right(times, end_ns)
        return [(r, w) for _, r, w in self.changes[first:max(last, first + 1)]]

    # -- lifecycle ------------------------------------------------------------------------
    async def _on_loop(self) -> None:
        self._semaphore = asyncio.Semaphore(self.slots)

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self._health)
        router.add_get("/metrics", self._metrics)
        router.add_post("/v1/completions", self._complete)
        router.add_post("/v1/chat/completions", self._complete)

    # -- handlers -------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert self._semaphore is not None
        self.requests += 1
        tokens = int(body.get("max_tokens") or self.completion_tokens)
        prompt = str(body.get("prompt") or body.get("messages") or "")
        self.waiting += 1
        self._changed()
        try:
            await self._semaphore.acquire()
        except BaseException:
            self.waiting -= 1
            self._changed()
            raise
        self.waiting -= 1
        self.running += 1
        self._changed()
        self._prompt_tokens.inc(max(1, len(prompt.split())))
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            chat = request.path.endswith("/chat/completions")
            gap = self.service_s / max(1, tokens)
            for index in range(tokens):
                await asyncio.sleep(gap)
                self._generation_tokens.inc()
                await response.write(_sse(_chunk(chat, index)))
            await response.write(_sse({"choices": [], "usage": {
                "prompt_tokens": max(1, len(prompt.split())), "completion_tokens": tokens}}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.running -= 1
            self._changed()
            self._semaphore.release()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(chat: bool, index: int) -> dict[str, Any]:
    if chat:
        return {"choices": [{"index": 0, "delta": {"content": f" t{index}"}, "finish_reason": None}]}
    return {"choices": [{"index": 0, "text": f" t{index}", "finish_reason": None}]}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--service", type=float, default=0.2, help="seconds each request runs")
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args(argv)
    with SlotServer(slots=args.slots, service_s=args.service, completion_tokens=args.tokens,
                    host=args.host, port=args.port) as server:
        print(server.url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover - manual use
    main(sys.argv[1:])
