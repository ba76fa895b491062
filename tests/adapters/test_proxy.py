"""The Azure clients reach Azure through the proxy the environment names (HTTPS_PROXY, NO_PROXY), looked up once
an origin, and never take credentials from ~/.netrc: the pipeline sends its own Authorization.

The real KeyClient reads a key from the stand-in over HTTPS, through a real CONNECT proxy on loopback that
tunnels to it and records what it was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from monitor.adapters.azure_clients import AzureClients
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import azure_options
from monitor.entry.config import Settings
from monitor.sandbox import AsyncStaticTokenCredential, Sandbox
from tests.builders import VAULT, key, namespace, ref, scenario


class ConnectProxy:
    """An HTTP proxy that answers CONNECT by tunnelling to the target; `asked` lists each CONNECT's target."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
        self.asked.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def _read_key_through(proxy_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    """The current version of k1 as the clients read it, and what the proxy was asked for."""
    parsed, _ = parse_scenario(scenario([namespace("sb-a", ref("k1"))], [key("k1")]))

    async def run() -> tuple[str, list[str]]:
        async with ConnectProxy() as proxy:
            with Sandbox(parsed) as sandbox:
                for name, value in proxy_environment.items():
                    monkeypatch.setenv(name, value.replace("{proxy}", proxy.url))
                clients = AzureClients(
                    AsyncStaticTokenCredential(), azure_options(Settings.from_environment(sandbox.environment()))
                )
                try:
                    found = await clients.key_client(VAULT).get_key("k1")
                    found_again = await clients.key_client(VAULT).get_key("k1")
                    assert found_again.properties.version == found.properties.version
                finally:
                    await clients.close()
                return found.properties.version or "", list(proxy.asked)

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def _no_proxy_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_key_reads_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY set: the key reads tunnel through it (CONNECT to the stand-in), one tunnel reused."""
    version, asked = _read_key_through({"HTTPS_PROXY": "{proxy}"}, monkeypatch)
    assert version
    assert len(asked) == 1
    assert asked[0].startswith("CONNECT 127.0.0.1:")


def test_no_proxy_naming_the_host_connects_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY naming the host: the proxy is never asked, the read still works."""
    version, asked = _read_key_through({"HTTPS_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, monkeypatch)
    assert version
    assert asked == []


def test_a_netrc_naming_the_host_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ~/.netrc with credentials for the host changes nothing: aiohttp would add them as basic auth beside the
    pipeline's bearer token and refuse the request."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    version, asked = _read_key_through({"NETRC": str(netrc)}, monkeypatch)
    assert version
    assert asked == []
