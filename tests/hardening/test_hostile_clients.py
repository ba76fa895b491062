"""Hostile clients against `serve` over raw sockets: a slow request head and a slow body are cut off, an
abandoned body costs an INFO line and nothing else, and connections past the cap are refused at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.entry.serve import SECRET_HEADER, Server
from monitor.sandbox import Sandbox
from tests.hardening.support import FAST_AZURE, TEST_SECRET, fleet_document, parsed

GIVE_UP = 30.0  # a liveness bound for the test, far above the server's timeouts; never a speed target


@asynccontextmanager
async def hostile_target(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[Server, int]]:
    async with Sandbox(parsed(fleet_document())) as sandbox:
        environment = {**sandbox.environment(), **FAST_AZURE, "KEYHEALTH_SQLITE_PATH": str(tmp_path / "s.sqlite")}
        settings = Settings.from_environment(environment)
        server = Server(
            build_monitor(settings),
            schedule=settings.poll_schedule,
            secret=TEST_SECRET,
            now=sandbox.clock.now,
            **limits,
        )
        url = await server.start("127.0.0.1", 0)
        try:
            yield server, int(url.rsplit(":", 1)[1])
        finally:
            await server.stop()


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (b"" when it just hung up)."""
    return await asyncio.wait_for(reader.read(), timeout=GIVE_UP)


def _head(content_length: int) -> bytes:
    return (
        f"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{SECRET_HEADER}: {TEST_SECRET}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def test_a_client_that_never_finishes_its_request_head_is_cut_off(tmp_path):
    """Slowloris: a header line every 200 ms, never the blank line; and a connection that sends nothing."""

    async def run() -> tuple[bytes, bytes, int]:
        async with hostile_target(tmp_path, header_timeout=1.0) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /api/events HTTP/1.1\r\nHost: x\r\n")

            async def drip() -> int:
                sent = 0
                while not reader.at_eof():
                    try:
                        writer.write(f"X-Slow-{sent}: y\r\n".encode())
                        await writer.drain()
                    except ConnectionError:
                        break
                    sent += 1
                    await asyncio.sleep(0.2)
                return sent

            dripping = asyncio.ensure_future(drip())
            answer = await _closed_by_server(reader)
            idle = await _closed_by_server(idle_reader)
            lines = await dripping
            writer.close()
            idle_writer.close()
            return answer, idle, lines

    answer, idle, lines = asyncio.run(run())
    assert answer == b"" and idle == b""  # closed with nothing sent: no request was ever read
    assert lines < GIVE_UP / 0.2  # it was the server that hung up, long before the test would have


def test_a_client_that_stalls_in_its_body_gets_408(tmp_path):
    async def run() -> tuple[bytes, int]:
        async with hostile_target(tmp_path, body_timeout=1.0) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_head(1000) + b'[{"id": "')
            await writer.drain()
            answer = await _closed_by_server(reader)
            writer.close()
            return answer, server.refused["408"]

    answer, refused = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert refused == 1


def test_an_abandoned_body_is_logged_at_info_without_a_traceback(tmp_path, caplog):
    async def run() -> int:
        async with hostile_target(tmp_path) as (server, port):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_head(100_000) + b'[{"id": "x", ')
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()  # the client goes away mid-body
            for _ in range(int(GIVE_UP / 0.05)):
                if server.refused["abandoned"]:
                    break
                await asyncio.sleep(0.05)
            return server.refused["abandoned"]

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(run()) == 1
    abandoned = [r for r in caplog.records if "abandoned its body" in r.getMessage()]
    assert [r.levelno for r in abandoned] == [logging.INFO]
    # The poll's own alerts log at ERROR under keyhealth.alerts; nothing about the request may.
    noisy = [r for r in caplog.records if r.exc_info or (r.levelno >= logging.ERROR and r.name != "keyhealth.alerts")]
    assert not noisy, [r.getMessage() for r in noisy]


def test_connections_past_the_cap_are_refused_with_503_and_the_server_recovers(tmp_path):
    async def run() -> tuple[bytes, int, bytes]:
        async with hostile_target(tmp_path, max_connections=4) as (server, port):
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.2)  # all four accepted
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await _closed_by_server(reader)
            writer.close()
            for _, held_writer in held:
                held_writer.close()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            recovered = await _closed_by_server(reader)
            writer.close()
            return refused, server.refused["503"], recovered

    refused, count, recovered = asyncio.run(run())
    assert refused.startswith(b"HTTP/1.1 503") and count == 1
    assert (
        recovered.startswith(b"HTTP/1.1 ")
        and b"503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0" not in recovered
    )
