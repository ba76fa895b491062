"""A real local webhook (aiohttp) that records what the sandbox POSTs, on its own thread and loop."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.threaded_server import ThreadedServer


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
    _server: ThreadedServer | None = None

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
        self._server = ThreadedServer(self._handle, self.ssl_context)
        port = self._server.start()
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}/api/events"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.stop()
