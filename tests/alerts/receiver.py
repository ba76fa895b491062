"""A real HTTPS receiver for alert sinks: records each POST and answers with scripted statuses."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int  # what the receiver answered

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class AlertReceiver:
    """Answers the next status of `script` (then `status`), after `delay` seconds; `reply` is the body."""

    ssl_context: ssl.SSLContext
    status: int = 200
    reply: str = ""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    echo: bool = False  # a failure's body repeats the request's path and body, as careless services do
    plain_http: bool = False  # no TLS (an OTLP collector on loopback)
    script: deque[int] = field(default_factory=deque)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"{'http' if self.plain_http else 'https'}://127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> list[Hit]:
        return [h for h in self.hits if h.accepted]

    def fail_next(self, *statuses: int) -> None:
        self.script.extend(statuses)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.script.popleft() if self.script else self.status
        self.hits.append(Hit(request.path_qs, dict(request.headers), raw, status))
        reply = (
            f"rejected {request.path_qs}: {raw.decode(errors='replace')}" if self.echo and status >= 300 else self.reply
        )
        return web.Response(status=status, text=reply, content_type="text/plain", headers=self.headers)

    def __enter__(self) -> AlertReceiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def start() -> None:
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
                await self._runner.setup()
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                self.port = sock.getsockname()[1]
                await web.SockSite(
                    self._runner, sock, ssl_context=None if self.plain_http else self.ssl_context
                ).start()

            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
