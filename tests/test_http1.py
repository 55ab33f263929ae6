"""Unit tests of pytest_fmbench.endpoints.http1 against scripted raw servers on loopback.

Each test server is an asyncio protocol in the test's own loop: it answers every request with
a scripted list of steps (bytes to write, pauses, a close), so framing, keep-alive and every
failure path of the transport can be exercised exactly.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pytest_fmbench.endpoints import http1
from pytest_fmbench.endpoints.base import InferenceRequest
from pytest_fmbench.endpoints.http1 import Exchange, Pool, Target, parse_headers, render_request
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.run import run_async

MS = 1_000_000
CLOSE = object()

# A step: bytes to write, a float (seconds to wait), or CLOSE.
Step = Any
Script = Callable[[int, int], list[Step]]  # (connection index, request index on it) -> steps


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class ScriptedServer:
    """Counts connections and requests; plays the script for each request."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ServerSide(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()


class _ServerSide(asyncio.Protocol):
    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        self.index = owner.connections
        owner.connections += 1
        self.served = 0
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode()
        length = next((int(line.split(":")[1]) for line in head.split("\r\n")
                       if line.lower().startswith("content-length:")), 0)
        if len(self.buffer) < end + 4 + length:
            return
        self.owner.requests.append(self.buffer[:end + 4 + length])
        self.buffer = self.buffer[end + 4 + length:]
        steps = self.owner.script(self.index, self.served)
        self.served += 1
        asyncio.get_running_loop().create_task(self.play(steps))

    async def play(self, steps: list[Step]) -> None:
        for step in steps:
            if self.transport.is_closing():
                return
            if step is CLOSE:
                self.transport.close()
            elif isinstance(step, float):
                await asyncio.sleep(step)
            else:
                self.transport.write(step)


def exchanges(script: Script, count: int = 1, *, timeout_s: float = 2.0, streamed: bool = False,
              gap_s: float = 0.0, before: Callable[[int], Awaitable[None]] | None = None
              ) -> tuple[list[Exchange], ScriptedServer]:
    """``count`` requests one after the other through one pool."""
    server = ScriptedServer(script)

    async def go() -> list[Exchange]:
        url = await server.start()
        target = Target(url + "/v1/completions")
        pool = Pool(target)
        raw = render_request("POST", target, target.path, {"Content-Type": "application/json"},
                             b'{"prompt": "x"}')
        out = []
        try:
            for index in range(count):
                if before is not None:
                    await before(index)
                out.append(await pool.exchange(raw, timeout_s, streamed=streamed))
                await asyncio.sleep(gap_s)
        finally:
            pool.close()
            await server.stop()
        return out

    return run_async(go), server


# -- framing and keep-alive -----------------------------------------------------------------

def test_content_length_responses_reuse_one_connection() -> None:
    results, server = exchanges(lambda c, r: [ok(b"hello %d" % r)], count=3)
    assert [e.body for e in results] == [b"hello 0", b"hello 1", b"hello 2"]
    assert all(e.status == 200 and e.error == "" for e in results)
    assert server.connections == 1
    assert all(e.sent_ns <= e.last_byte_ns for e in results)
    request = server.requests[0]
    assert request.startswith(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert request.endswith(b'Content-Length: 15\r\n\r\n{"prompt": "x"}')


def test_chunked_reads_keep_their_arrival_times() -> None:
    script = lambda c, r: [CHUNKED_HEAD + chunk(b"data: a\n\n"), 0.05, chunk(b"data: b\n\n"),
                           0.05, chunk(b"data: [DONE]\n\n") + LAST_CHUNK]
    (result,), _ = exchanges(script, streamed=True)
    assert result.error == ""
    assert [data for _, data in result.reads] == [b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"]
    times = [at for at, _ in result.reads]
    assert times[1] - times[0] >= 40 * MS and times[2] - times[1] >= 40 * MS
    assert result.last_byte_ns == times[2]


def test_body_delimited_by_the_end_of_the_connection() -> None:
    script = lambda c, r: [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ", 0.02,
                           b"part two", CLOSE]
    results, server = exchanges(script, count=2)
    assert [(e.error, e.body) for e in results] == [("", b"part one, part two")] * 2
    assert server.connections == 2  # not reused


def test_connection_close_header_is_honoured() -> None:
    results, server = exchanges(lambda c, r: [ok(b"x", "Connection: close")], count=3)
    assert all(e.error == "" for e in results)
    assert server.connections == 3


def test_stream_held_open_after_done_completes_at_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "DRAIN_S", 0.2)
    script = lambda c, r: [CHUNKED_HEAD + chunk(b"data: [DONE]\n\n"), 30.0]
    results, server = exchanges(script, count=2, streamed=True, gap_s=0.4)
    for result in results:
        assert result.error == ""
        assert result.last_byte_ns - result.sent_ns < 150 * MS  # not the drain time
    assert server.connections == 2  # the held connection was given up after DRAIN_S


def test_terminator_after_done_keeps_the_connection() -> None:
    script = lambda c, r: [CHUNKED_HEAD + chunk(b"data: [DONE]\n\n"), 0.05, LAST_CHUNK]
    results, server = exchanges(script, count=3, streamed=True, gap_s=0.1)
    assert all(e.error == "" and e.last_byte_ns - e.sent_ns < 40 * MS for e in results)
    assert server.connections == 1


# -- failures end as error classes ----------------------------------------------------------

def test_close_before_any_response_is_a_connection_error() -> None:
    (result,), _ = exchanges(lambda c, r: [CLOSE])
    assert result.error == "connection"
    assert result.status is None and result.retries == 0
    assert "before responding" in result.error_detail


def test_close_mid_body_is_a_truncated_stream() -> None:
    script = lambda c, r: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", 0.01, CLOSE]
    (result,), _ = exchanges(script)
    assert result.error == "stream_truncated"
    assert result.status == 200 and result.body == b"only this"


def test_invalid_http_is_a_bad_response_and_the_pool_goes_on() -> None:
    script = lambda c, r: [b"NONSENSE\r\n\r\n"] if r == 0 and c == 0 else [ok(b"fine")]
    results, server = exchanges(script, count=2)
    assert results[0].error == "bad_response"
    assert "invalid HTTP response" in results[0].error_detail
    assert (results[1].error, results[1].body) == ("", b"fine")
    assert server.connections == 2


def test_no_response_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    script = lambda c, r: [5.0] if c == 0 else [ok(b"late but fine")]
    results, server = exchanges(script, count=2, timeout_s=0.2)
    assert results[0].error == "timeout"
    assert results[0].error_detail == "no complete response in 0.2 s"
    assert 190 * MS <= results[0].last_byte_ns - results[0].sent_ns < 2000 * MS
    assert results[1].error == ""
    assert server.connections == 2


def test_nothing_listening_is_a_connection_error_naming_the_address() -> None:
    async def go() -> Exchange:
        probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        pool = Pool(Target(f"http://127.0.0.1:{port}/v1/completions"))
        return await pool.exchange(b"GET / HTTP/1.1\r\n\r\n", 2.0, streamed=False)

    result = run_async(go)
    assert result.error == "connection"
    assert "cannot connect to 127.0.0.1:" in result.error_detail


def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    script = lambda c, r: [ok(b"one") + b"HTTP/1.1 200 OK\r\n"] if c == 0 else [ok(b"two")]
    results, server = exchanges(script, count=2, gap_s=0.05)
    assert [(e.error, e.body) for e in results] == [("", b"one"), ("", b"two")]
    assert server.connections == 2


def test_a_stale_idle_connection_is_retried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server's keep-alive timeout closes a connection just as a request goes out on it.
    monkeypatch.setattr(http1, "STALE_AFTER_NS", 0)
    script = lambda c, r: [CLOSE] if r == 1 else [ok(b"fresh")]
    results, server = exchanges(script, count=2)
    assert [(e.error, e.body, e.retries) for e in results] == [("", b"fresh", 0), ("", b"fresh", 1)]
    assert server.connections == 2


def test_a_connection_in_steady_use_is_not_retried() -> None:
    script = lambda c, r: [CLOSE] if r == 1 else [ok(b"fresh")]
    results, _ = exchanges(script, count=2)
    assert [(e.error, e.retries) for e in results] == [("", 0), ("connection", 0)]


def test_cancelling_an_exchange_closes_its_connection() -> None:
    server = ScriptedServer(lambda c, r: [5.0] if c == 0 else [ok(b"ok")])

    async def go() -> tuple[int, Exchange]:
        url = await server.start()
        pool = Pool(Target(url))
        raw = render_request("POST", pool.target, "/", {}, b"")
        task = asyncio.ensure_future(pool.exchange(raw, 10.0, streamed=False))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        busy = len(pool.busy) + len(pool.idle)
        after = await pool.exchange(raw, 2.0, streamed=False)
        pool.close()
        await server.stop()
        return busy, after

    busy, after = run_async(go)
    assert busy == 0
    assert after.error == "" and server.connections == 2


def test_addresses_are_looked_up_once_and_tried_in_turn() -> None:
    server = ScriptedServer(lambda c, r: [ok(b"x", "Connection: close")])

    async def go() -> tuple[list[str], float, float]:
        url = await server.start()
        port = int(url.rsplit(":", 1)[1])
        pool = Pool(Target(f"http://localhost:{port}/v1"))
        raw = render_request("POST", pool.target, "/v1", {}, b"")
        errors = [(await pool.exchange(raw, 2.0, streamed=False)).error]
        assert pool._resolved is not None
        looked_up = pool._resolved[0]
        errors += [(await pool.exchange(raw, 2.0, streamed=False)).error for _ in range(2)]
        again = pool._resolved[0]
        # A refused first address (nothing listens there) falls through to the next one.
        probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        dead = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        pool._resolved = (pool._resolved[0], [(socket.AF_INET, ("127.0.0.1", dead)),
                                              (socket.AF_INET, ("127.0.0.1", port))])
        errors.append((await pool.exchange(raw, 2.0, streamed=False)).error)
        pool.close()
        await server.stop()
        return errors, looked_up, again

    errors, looked_up, again = run_async(go)
    assert errors == ["", "", "", ""]
    assert looked_up == again  # three connections, one lookup
    assert server.connections == 4


# -- targets and headers --------------------------------------------------------------------

@pytest.mark.parametrize(("url", "host", "port", "header", "path", "tls"), [
    ("http://127.0.0.1:8000/v1/completions", "127.0.0.1", 8000, "127.0.0.1:8000", "/v1/completions", False),
    ("http://example.com/v1", "example.com", 80, "example.com", "/v1", False),
    ("https://api.example.com/openai/v1/chat/completions", "api.example.com", 443, "api.example.com",
     "/openai/v1/chat/completions", True),
    ("https://h:8443", "h", 8443, "h:8443", "/", True),
    ("http://[::1]:9000/v1", "::1", 9000, "[::1]:9000", "/v1", False),
])
def test_target(url: str, host: str, port: int, header: str, path: str, tls: bool) -> None:
    target = Target(url)
    assert (target.host, target.port, target.host_header, target.path, target.tls) == (
        host, port, header, path, tls)


@pytest.mark.parametrize("url", ["ftp://h/v1", "localhost:8000", "http:///v1"])
def test_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="is not an http:// or https:// URL"):
        Target(url)


def test_a_header_with_a_line_break_is_refused_without_echoing_its_value() -> None:
    with pytest.raises(ValueError) as info:
        parse_headers({"Authorization": "Bearer sk-secret\r\nX-Evil: 1"})
    assert "Authorization" in str(info.value) and "sk-secret" not in str(info.value)
    with pytest.raises(ValueError):
        parse_headers({"Bad Name": "v"})
    assert parse_headers({"X-Count": 3}) == {"X-Count": "3"}


# -- TLS ------------------------------------------------------------------------------------

def test_https_with_a_trusted_certificate(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    body = b'data: {"choices":[{"index":0,"text":"hi","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    async def go() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        owner = ScriptedServer(lambda c, r: [ok(body)])
        server = await loop.create_server(lambda: _ServerSide(owner), "127.0.0.1", 0,
                                          ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        client = OpenAIClient(f"https://127.0.0.1:{port}", timeout_s=5)
        untrusted = OpenAIClient(f"https://127.0.0.1:{port}", timeout_s=5)
        try:
            good = await client.invoke(InferenceRequest("x", prompt_tokens=1))
            monkeypatch.delenv("SSL_CERT_FILE")
            bad = await untrusted.invoke(InferenceRequest("x", prompt_tokens=1))
        finally:
            await client.aclose()
            await untrusted.aclose()
            server.close()
        return good, bad

    good, bad = run_async(go)
    assert good.error == "" and good.text == "hi"
    assert bad.error == "connection"
    assert "CERTIFICATE_VERIFY_FAILED" in bad.error_detail
