"""An aiohttp app served from its own thread and event loop, for tests and the perf suite.

``with Server(...) as server: server.url``: the server listens on a free port of ``host``
(``port=0``) until the block ends. Subclasses give their routes (``_routes``) and may set up
what must be created on the server's own loop (``_on_loop``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web


class BackgroundServer:
    thread_name = "fake-server"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self.url

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._startup())
        self._ready.set()
        loop.run_forever()
        loop.close()

    def _routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def _on_loop(self) -> None:
        """Before the app starts, on the server's loop (loop-bound objects: semaphores...)."""

    async def _startup(self) -> None:
        await self._on_loop()
        app = web.Application()
        self._routes(app.router)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
