"""A real HTTPS receiver for alert sinks: records each POST and answers with scripted statuses."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.threaded_server import ThreadedServer


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
    _server: ThreadedServer | None = None

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
        self._server = ThreadedServer(self._handle, None if self.plain_http else self.ssl_context)
        self.port = self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.stop()
