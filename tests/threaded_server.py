"""A real aiohttp server on 127.0.0.1 with its own thread and event loop, for test receivers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ThreadedServer:
    """Serves every path and method with `handler` (TLS with `ssl_context`) until stop(), which is idempotent."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> int:
        """Listen on a free port (returned) before returning."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def start() -> None:
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self._handler)
                self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
                await self._runner.setup()
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                self.port = sock.getsockname()[1]
                await web.SockSite(self._runner, sock, ssl_context=self._ssl_context).start()

            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
