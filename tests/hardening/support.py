"""Shared pieces of the hardening tests: a small fleet, a `serve` in-process against the stand-in, Event Grid
events, and an environment that keeps Azure retries and timeouts small."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from monitor.domain.model import Scenario
from monitor.domain.scenario import parse_scenario
from monitor.entry.config import Settings
from monitor.entry.serve import SECRET_HEADER, Server
from monitor.sandbox import Sandbox
from tests.builders import key, namespace, ref, scenario, vault, version

NOW = "2026-11-22T00:00:00Z"
OTHER = "https://kv-other.vault.azure.net"
VAULT = "https://kv-test.vault.azure.net"
# Patient enough for a loaded 2-core machine, impatient enough that a hang costs seconds, not minutes.
FAST_AZURE = {"KEYHEALTH_HTTP_RETRIES": "1", "KEYHEALTH_HTTP_TIMEOUT_SECONDS": "1"}


def fleet_document(now: str = NOW) -> dict[str, Any]:
    """Four namespaces over two vaults: healthy, expiring in 3 days, revoked (deleted key), and two keys."""
    return scenario(
        [
            namespace("sb-one", ref("k1")),
            namespace("sb-soon", ref("k-soon")),
            namespace("sb-gone", ref("k-gone")),
            namespace("sb-two", ref("k2"), ref("k3", vault_uri=OTHER)),
        ],
        [
            key("k1"),
            key("k-soon", version("v1", exp="2026-11-25T00:00:00Z")),
            key("k-gone", deleted=True),
            key("k2"),
            key("k3", vault_uri=OTHER),
        ],
        vaults=[vault(), vault(OTHER)],
        now=now,
    )


def minimal_key_event(**overrides: object) -> dict[str, Any]:
    """The least an Event Grid Key Vault event carries: the fields the parser needs, nothing else."""
    event: dict[str, Any] = {
        "id": "e-1",
        "eventType": "Microsoft.KeyVault.KeyExpired",
        "eventTime": "2026-11-22T00:00:00Z",
        "data": {
            "Id": "https://kv-prod.vault.azure.net/keys/sb-cmk/0123456789abcdef0123456789abcdef",
            "VaultName": "kv-prod",
        },
    }
    event.update(overrides)
    return event


def parsed(document: dict[str, Any]) -> Scenario:
    value, _ = parse_scenario(document)
    return value


# `serve` takes no request without a credential: the test servers get this secret unless told otherwise, and
# `Running.session` sends it on every request.
TEST_SECRET = "test-webhook-secret-0123456789"


@dataclass
class Running:
    sandbox: Sandbox
    server: Server
    session: aiohttp.ClientSession  # sends the server's secret
    url: str

    async def post(
        self,
        path: str,
        body: object,
        content_type: str | None = "application/json",
        *,
        credentials: bool = True,
        **options: Any,
    ) -> tuple[int, Any]:
        """POST `body` (JSON unless bytes); without `credentials`, from a client that sends no secret."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = dict(options.pop("headers", {}))
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with contextlib.AsyncExitStack() as stack:
            session = self.session if credentials else await stack.enter_async_context(aiohttp.ClientSession())
            async with session.post(self.url + path, data=data, headers=headers, **options) as reply:
                text = await reply.text()
                return reply.status, (json.loads(text) if text.startswith(("{", "[")) else text)

    async def get(self, path: str, *, credentials: bool = True, **options: Any) -> tuple[int, Any]:
        """GET `path`, its JSON decoded (or its text); without `credentials`, from a client that sends no secret."""
        async with contextlib.AsyncExitStack() as stack:
            session = self.session if credentials else await stack.enter_async_context(aiohttp.ClientSession())
            async with session.get(self.url + path, **options) as reply:
                text = await reply.text()
                return reply.status, (json.loads(text) if text.startswith(("{", "[")) else text)


@asynccontextmanager
async def serving(tmp_path: Path, document: dict[str, Any], **environment: str) -> AsyncIterator[Running]:
    """`serve` in this process against the stand-in serving `document`, after its start-up poll."""
    async with Sandbox(parsed(document)) as sandbox:
        env = {
            **sandbox.environment(),
            **FAST_AZURE,
            "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"),
            "KEYHEALTH_WEBHOOK_SECRET": TEST_SECRET,
            **environment,
        }
        settings = Settings.from_environment(env)
        server = Server.from_settings(settings, now=sandbox.clock.now)
        url = await server.start("127.0.0.1", 0)
        await server.poll_if_due()
        credentials = {SECRET_HEADER: settings.webhook_secret} if settings.webhook_secret else {}
        try:
            async with aiohttp.ClientSession(headers=credentials) as session:
                yield Running(sandbox, server, session, url)
        finally:
            await server.stop()


class ServeThread:
    """`serve` on its own event loop in a thread, so synchronous code (a hypothesis test) can talk HTTP to it."""

    def __init__(self, sandbox: Sandbox, environment: dict[str, str]) -> None:
        self.sandbox = sandbox
        self._environment = {"KEYHEALTH_WEBHOOK_SECRET": TEST_SECRET, **environment}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.server: Server | None = None
        self.url = ""
        self.port = 0

    def __enter__(self) -> ServeThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self.server = Server.from_settings(
                    Settings.from_environment(self._environment), now=self.sandbox.clock.now
                )
                self.url = loop.run_until_complete(self.server.start("127.0.0.1", 0))
                self.port = int(self.url.rsplit(":", 1)[1])
                loop.run_until_complete(self.server.poll_if_due())
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(60)
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(60)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        credentials: bool = True,
    ) -> tuple[int, Any]:
        """One request over a fresh connection (with the server's secret unless told not to); the answer decoded."""
        secret = self._environment.get("KEYHEALTH_WEBHOOK_SECRET")
        sent = {SECRET_HEADER: secret} if credentials and secret else {}
        sent.update(headers or {})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            chunked = body is not None and not isinstance(body, bytes)
            connection.request(method, path, body=body, headers=sent, encode_chunked=chunked)
            reply = connection.getresponse()
            text = reply.read().decode("utf-8", "replace")
        finally:
            connection.close()
        return reply.status, (json.loads(text) if text.startswith(("{", "[")) else text)
