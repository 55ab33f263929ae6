"""A streaming OpenAI-style server cheap enough never to be the limit of the client benchmark.

    python benchmarks/perf/server.py --delay 0.05 [--port 0] [--chunks 16]

Raw asyncio protocol on uvloop, HTTP/1.1 keep-alive, responses pre-rendered once: the
headers and first content chunk go out at once, the rest (content chunks, the finish chunk,
usage, ``[DONE]``) after ``--delay`` seconds (all at once when the delay is 0). For each
response it measures its true hold: from the moment the whole request was read to the moment
the last byte was handed to the socket (timers overshoot, so this is what the client's
latency should be compared with). ``GET /holds`` returns ``{request id: hold ns}`` for the
responses since the last call; the id is read from ``<id:N>`` in the request body.

It prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any, ClassVar

_NOW = time.perf_counter_ns


def render(chunks: int) -> tuple[bytes, bytes]:
    """(first part, rest) of one response, HTTP headers included."""
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def content(index: int, finish: str | None) -> dict[str, Any]:
        return {"id": "cmpl-bench-0123456789abcdef", "object": "text_completion",
                "created": 1700000000, "model": "bench/model-8b",
                "choices": [{"index": 0, "text": f" tok{index}", "logprobs": None,
                             "finish_reason": finish, "stop_reason": None}],
                "usage": None}

    first = event(content(0, None))
    rest = b"".join(event(content(i, "length" if i == chunks - 1 else None)) for i in range(1, chunks))
    rest += event({"id": "cmpl-bench-0123456789abcdef", "object": "text_completion",
                   "created": 1700000000, "model": "bench/model-8b", "choices": [],
                   "usage": {"prompt_tokens": 8, "completion_tokens": chunks,
                             "total_tokens": 8 + chunks}})
    rest += b"data: [DONE]\n\n"
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Content-Length: " + str(len(first) + len(rest)).encode() + b"\r\n\r\n")
    return head + first, rest


class Server(asyncio.Protocol):
    holds: ClassVar[dict[int, int]] = {}
    first: bytes = b""
    rest: bytes = b""
    delay: float = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            at = head.lower().find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17: stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4: end + 4 + length]
            buffer = buffer[end + 4 + length:]
            self.handle(head, body, _NOW())
        self.buffer = buffer

    def handle(self, head: bytes, body: bytes, received: int) -> None:
        if head.startswith(b"GET /holds"):
            data = json.dumps(Server.holds).encode()
            Server.holds = {}
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
            return
        if head.startswith(b"GET"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        at = body.find(b"<id:")
        request_id = int(body[at + 4: body.find(b">", at)]) if at >= 0 else -1
        if self.delay <= 0:
            self.transport.write(self.first + self.rest)
            Server.holds[request_id] = _NOW() - received
            return
        self.transport.write(self.first)
        self.loop.call_later(self.delay, self.finish, request_id, received)

    def finish(self, request_id: int, received: int) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(self.rest)
        Server.holds[request_id] = _NOW() - received


async def serve(port: int, delay: float, chunks: int) -> None:
    Server.first, Server.rest = render(chunks)
    Server.delay = delay
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop

        uvloop.run(serve(args.port, args.delay, args.chunks))
    except ImportError:
        asyncio.run(serve(args.port, args.delay, args.chunks))


if __name__ == "__main__":
    main()
