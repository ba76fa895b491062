"""What a server reachable over a network needs against hostile clients: header and body timeouts, a
linger after early answers, a cap on open connections (the next is answered 503 from the protocol
factory), and a quiet access log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

# A client gets this long to send a whole request head after connecting (or after the last answer on a kept-alive
# connection), and this long for its body: slow clients cannot hold connections open.
HEADER_TIMEOUT = 15.0
BODY_TIMEOUT = 30.0
LINGER = 2.0
MAX_CONNECTIONS = 256  # open connections at once; the next is answered 503 and closed


class QuietAccessLogger(AbstractAccessLogger):
    """One line a request, with the path but never the query string (it may carry the webhook secret)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


# What reading a body raises when the client hangs up or cuts the body short.
ABANDONED = (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError)

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 5\r\n\r\n"


class _Busy(asyncio.Protocol):
    """What a connection past the cap talks to: one 503 and the connection closed, no request handler at all."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP: holds by construction
        transport.write(_BUSY)
        transport.close()


class CappedSite(web.TCPSite):
    """A TCP site that hands connections past `max_connections` to `_Busy` instead of holding them all."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, max_connections: int, on_refused: Callable[[], None]
    ) -> None:
        super().__init__(runner, host, port)
        self._max_connections = max_connections
        self._on_refused = on_refused

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does; TCPSite.start's listener is replaced below
        server = self._runner.server
        assert server is not None  # noqa: S101 - set up by the runner first

        loop = asyncio.get_running_loop()
        # A burst of accepts creates handlers before any registers with the server (connection_made comes a loop
        # step later): those in between are counted too, or a burst would pass the cap.
        pending = [0]

        def settle() -> None:
            pending[0] -= 1

        def protocol() -> asyncio.Protocol:
            if len(server.connections) + pending[0] >= self._max_connections:
                self._on_refused()
                return _Busy()
            pending[0] += 1
            loop.call_soon(settle)  # queued before the transport queues connection_made, so it runs just before
            return server()

        self._server = await loop.create_server(protocol, self._host, self._port)
