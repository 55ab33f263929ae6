"""A lean HTTP/1.1 client for the load's hot path: asyncio protocols, llhttp parsing.

Why not aiohttp here: measured with the client benchmark (``benchmarks/perf``), aiohttp's
request machinery took about 150 µs of CPU per streamed request, more than half the client's
cost, and wrote the request one loop iteration after the call, so a busy loop delayed it.
This client does per request only what a benchmark needs:

- the whole request (request line, headers, body) is rendered once per payload and handed to
  the transport in one write; ``sent`` is taken right before it;
- each network read is timestamped in ``data_received``, before anything else runs, and its
  body bytes are kept with that time; nothing is parsed or decoded here;
- framing (content-length, chunked, keep-alive) is parsed by llhttp through ``httptools``,
  the parser uvicorn uses;
- connections are kept alive and reused, most recently used first;
- a streamed response is complete at its ``data: [DONE]`` event: a server that holds the
  stream open after it does not delay the next request; the connection is reused once the
  message ends, or closed after ``DRAIN_S``.

Every failure ends the exchange with an error class (``connection``, ``timeout``,
``stream_truncated``, ``bad_response``) instead of an exception, so one bad response never
stops a run. No proxies, no redirects, no compression: the benchmarked endpoint is addressed
directly, as the report says.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httptools

from pytest_fmbench.clock import now_ns

# How long a connection may go on after [DONE] before it is given up (not reused).
DRAIN_S = 2.0
# How long a looked-up address is used (load balancers change theirs).
DNS_TTL_S = 300.0
# A connection idle this long may have been closed by the server's keep-alive timeout.
STALE_AFTER_NS = 1_000_000_000
_DONE_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n")
_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


class Exchange:
    """One request/response as the transport saw it; ``reads`` hold (arrival ns, body bytes)."""

    __slots__ = ("error", "error_detail", "last_byte_ns", "reads", "retries", "sent_ns", "status")

    def __init__(self) -> None:
        self.sent_ns = 0
        self.last_byte_ns = 0
        self.status: int | None = None
        self.reads: list[tuple[int, bytes]] = []
        self.error = ""
        self.error_detail = ""
        self.retries = 0

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)


class Target:
    """Where requests go: scheme, host, port and path prefix of a base URL."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{url}' is not an http:// or https:// URL")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.path = parts.path or "/"
        self.query = parts.query


def render_request(method: str, target: Target, path: str, headers: Mapping[str, str],
                   body: bytes) -> bytes:
    """The bytes of one request, ready for a single write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host_header}"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.arrived = 0
        self.framed = False  # the response has a length or chunked framing (else: until EOF)
        self.streamed = False
        self.closed = False
        self.idle_since = 0  # when it was last put back in the pool (0: never used)

    # -- the exchange --------------------------------------------------------------------------

    def start(self, raw: bytes, exchange: Exchange, waiter: asyncio.Future[None],
              timeout_s: float, streamed: bool) -> None:
        assert self.transport is not None
        self.exchange, self.waiter, self.framed, self.streamed = exchange, waiter, False, streamed
        self.timer = self.pool.loop.call_later(timeout_s, self._timed_out, timeout_s)
        exchange.sent_ns = now_ns()
        self.transport.write(raw)

    def _end(self, error: str = "", detail: str = "") -> None:
        """Ends the exchange for its caller (the connection may still be busy draining)."""
        exchange, waiter = self.exchange, self.waiter
        if exchange is None or waiter is None:
            return
        self.waiter = None
        if error and not exchange.error:
            exchange.error, exchange.error_detail = error, detail[:500]
        if not exchange.last_byte_ns:
            exchange.last_byte_ns = self.arrived if not exchange.error and self.arrived else now_ns()
        if not waiter.done():
            waiter.set_result(None)

    def _timed_out(self, timeout_s: float) -> None:
        self.timer = None
        if self.waiter is not None:
            self._end("timeout", f"no complete response in {timeout_s:g} s")
        self.close()  # a late or endless response makes the connection unusable

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.exchange = None
        if self.closed:
            return
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self.close()

    # -- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None:
            self.close()  # a response nobody asked for: the connection can't be trusted

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in _FRAMING_HEADERS:
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        exchange.reads.append((self.arrived, body))
        if self.streamed and self.waiter is not None and body.endswith(_DONE_ENDS):
            # Complete for the caller; the connection waits for the message's end (or not).
            exchange.last_byte_ns = self.arrived
            self._end()
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.pool.loop.call_later(DRAIN_S, self.close)

    def on_message_complete(self) -> None:
        if self.exchange is None:
            return
        self._end()
        self._release()

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.arrived = now_ns()
        if self.exchange is None:
            self.close()  # bytes nobody asked for: the connection can't be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end("bad_response", "the server switched protocols")
            self.close()
        except httptools.HttpParserError as exc:
            self._end("bad_response", f"invalid HTTP response: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        exchange = self.exchange
        if exchange is not None and self.waiter is not None:
            reason = f": {exc}" if exc else ""
            if exchange.status is None:
                self._end("connection", f"the server closed the connection before responding{reason}")
            elif not self.framed and not exchange.error:
                self._end()  # a body delimited by the end of the connection
            else:
                self._end("stream_truncated", f"the server closed the connection mid-response{reason}")
        self.exchange = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class Pool:
    """Keep-alive connections to one target, opened on demand, unbounded (the load bounds)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if target.tls else None
        self._resolved: tuple[float, list[tuple[int, Any]]] | None = None

    async def exchange(self, raw: bytes, timeout_s: float, *, streamed: bool) -> Exchange:
        """Send one rendered request; the exchange carries the outcome, errors included.

        A kept-alive connection that sat idle for a while may have been closed by the server
        while the request was on its way (its keep-alive timeout); a request lost that way,
        before any response byte, is sent once more on a new connection and counted in
        ``retries``. A connection in steady use is never retried: its loss is the server's.
        """
        exchange = Exchange()
        while True:
            connection = self._idle()
            if connection is None:
                started = now_ns()
                try:
                    async with asyncio.timeout(timeout_s):
                        connection = await self._connect()
                except TimeoutError:
                    return _failed(exchange, started, "timeout",
                                   f"no connection within {timeout_s:g} s")
                except (OSError, ssl.SSLError) as exc:
                    return _failed(exchange, started, "connection", _describe(exc, self.target))
            stale = connection.idle_since and now_ns() - connection.idle_since > STALE_AFTER_NS
            self.busy.add(connection)
            waiter: asyncio.Future[None] = self.loop.create_future()
            connection.start(raw, exchange, waiter, timeout_s, streamed)
            try:
                await waiter
            except asyncio.CancelledError:
                connection.close()
                raise
            if not (stale and exchange.error == "connection" and exchange.status is None
                    and not exchange.retries):
                return exchange
            retries = exchange.retries + 1
            exchange = Exchange()
            exchange.retries = retries

    def _idle(self) -> _Connection | None:
        idle = self.idle
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.transport is not None and \
                    not connection.transport.is_closing():
                return connection
        return None

    async def _connect(self) -> _Connection:
        target = self.target
        addresses = await self._addresses()
        failure: OSError | None = None
        for family, address in addresses:
            try:
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self), address[0], address[1], family=family,
                    ssl=self._ssl, server_hostname=target.host if self._ssl else None)
                return protocol
            except OSError as exc:  # the next address, as a browser would
                failure = exc
        assert failure is not None
        raise failure

    async def _addresses(self) -> list[tuple[int, Any]]:
        """The target's addresses, looked up once per ``DNS_TTL_S`` (not once per connection:
        a load opens hundreds at once)."""
        now = self.loop.time()
        if self._resolved is None or now - self._resolved[0] > DNS_TTL_S:
            infos = await self.loop.getaddrinfo(self.target.host, self.target.port,
                                                type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"no address for {self.target.host}")
            self._resolved = now, [(info[0], info[4]) for info in infos]
        return self._resolved[1]

    def release(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        connection.idle_since = now_ns()
        self.idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.close()
        self.idle.clear()
        self.busy.clear()


def _failed(exchange: Exchange, started: int, error: str, detail: str) -> Exchange:
    exchange.sent_ns = started
    exchange.last_byte_ns = now_ns()
    exchange.error, exchange.error_detail = error, detail[:500]
    return exchange


def _describe(exc: BaseException, target: Target) -> str:
    return f"cannot connect to {target.host}:{target.port}: {type(exc).__name__}: {exc}"


def parse_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Header values as strings; a name or value that would break the request is refused
    (naming the header, never echoing its value: it may be a key)."""
    out = {str(k): str(v) for k, v in (headers or {}).items()}
    for name, value in out.items():
        if not name or any(c in name for c in "\r\n: \t") or any(c in value for c in "\r\n"):
            raise ValueError(f"header '{name.strip()}' has a line break or an invalid name")
    return out
