"""A real local webhook (aiohttp) that records what the sandbox POSTs, on its own thread and loop."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    method: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """Answers 200 (or 500 to the first `failures` POSTs); answers Event Grid's validation handshake."""

    ssl_context: ssl.SSLContext | None = None
    failures: int = 0
    validate: bool = True
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def notifications(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST" and r.headers.get("aeg-event-type") == "Notification"]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.received.append(Received(request.method, dict(request.headers), body))
        if request.method == "OPTIONS":  # the CloudEvents abuse-protection handshake
            return web.Response(headers={"WebHook-Allowed-Origin": request.headers.get("WebHook-Request-Origin", "")})
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            if not self.validate:
                return web.Response(status=404)
            assert isinstance(body, list)
            return web.json_response({"validationResponse": body[0]["data"]["validationCode"]})
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        return web.Response(status=200)

    def __enter__(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def start() -> None:
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
                await self._runner.setup()
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()
                scheme = "https" if self.ssl_context else "http"
                self.url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}/api/events"

            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        await asyncio.sleep(0.01)  # let the closed connections' transports finish closing

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._thread is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
