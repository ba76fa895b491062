"""`keyhealth serve` killed with SIGKILL and restarted, over and over: in the middle of a poll's reads, while a
poll records its judgement, and while an alert is on the wire. Nothing is lost: the incidents in the store are
the ones an uninterrupted poll makes, every alert reaches the receiver, at most once more than needed (the one
on the wire when the process died, which the receiver drops by its delivery id), and the SQLite file passes
`PRAGMA integrity_check` after every kill.

Leases: a killed process cannot release the poll lease (4 minutes) or the delivery lease (100 s) it held; a
restarted one waits for them to lapse. The test expires them in the file instead of waiting that long.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from monitor.app.poll import poll
from monitor.domain.documents import format_instant
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.builders import key, namespace, ref, scenario, version
from tests.hardening.fuzzing import EXTENDED, record
from tests.hardening.support import TEST_SECRET, parsed
from tests.threaded_server import ThreadedServer

REPO = Path(__file__).resolve().parent.parent.parent


def fleet(size: int, now: datetime) -> dict[str, Any]:
    """`size` namespaces with a key each: a third healthy, a third expiring in 3 days, a third deleted."""
    namespaces, keys = [], []
    soon = format_instant(now + timedelta(days=3))
    for index in range(size):
        name = f"k{index:04d}"
        namespaces.append(namespace(f"sb-{index:04d}", ref(name)))
        if index % 3 == 0:
            keys.append(key(name))
        elif index % 3 == 1:
            keys.append(key(name, version("v1", exp=soon)))
        else:
            keys.append(key(name, deleted=True))
    return scenario(namespaces, keys, now=format_instant(now))


@dataclass
class Receiver:
    """A plain-HTTP alert receiver that records each POST as it arrives, then answers after `delay` seconds."""

    delay: float = 0.0
    arrivals: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadedServer | None = None
    port: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append({"id": request.headers.get("X-KeyHealth-Delivery"), **json.loads(body)})
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=200)

    def __enter__(self) -> Receiver:
        self._server = ThreadedServer(self._handle)
        self.port = self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Serve:
    """One `keyhealth serve` process."""

    process: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls, environment: dict[str, str], log: Path) -> Serve:
        port = _free_port()
        command = [sys.executable, "-m", "monitor", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("ab") as output:
            process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)
        return cls(process, f"http://127.0.0.1:{port}")

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as reply:  # noqa: S310 - loopback
                return dict(json.load(reply))
        except OSError as error:
            body = getattr(error, "read", None)
            return dict(json.loads(body())) if callable(body) else None

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        assert self.process.returncode == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM: a graceful stop; it must exit 0."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0


def _wait(condition: Callable[[], bool], what: str, timeout: float = 90.0, step: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


class Store:
    """Reads the SQLite file serve writes, from outside, as an operator would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            return connection.execute(sql).fetchall()
        except sqlite3.OperationalError:  # no such table yet: serve has not created the schema
            return []
        finally:
            connection.close()

    def count(self, table: str) -> int:
        rows = self.query(f"SELECT count(*) FROM {table}")  # noqa: S608 - a table name of this test
        return int(rows[0][0]) if rows else 0

    def integrity(self) -> str:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            connection.close()

    def expire_leases(self) -> None:
        """What 4 minutes (poll) and 100 s (delivery) would do to the leases a killed process held."""
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            connection.execute("UPDATE lease SET expires_at = '2000-01-01T00:00:00.000000Z'")
            connection.commit()
        finally:
            connection.close()

    def incidents(self) -> set[tuple[str, str, bool, str]]:
        rows = self.query("SELECT namespace_id, condition, is_open, body FROM incident")
        return {(row[0].lower(), row[1], bool(row[2]), json.loads(row[3]).get("level")) for row in rows}


def _reference_incidents(document: dict[str, Any], environment: dict[str, str], directory: Path) -> set[Any]:
    """What one uninterrupted poll records, in this process, on a store of its own."""
    path = directory / "reference.sqlite"

    async def run() -> None:
        monitor = build_monitor(Settings.from_environment({**environment, "KEYHEALTH_SQLITE_PATH": str(path)}))
        try:
            await poll(monitor, now=datetime.now(UTC))
        finally:
            assert monitor.close is not None
            await monitor.close()

    asyncio.run(run())
    return Store(path).incidents()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


ROUNDS = 5 if EXTENDED else 1


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_serve_killed_mid_poll_mid_recording_and_mid_delivery_loses_nothing(
    tmp_path: Path, receiver: Receiver, round_: int
):
    """Four serve processes in a row on one store: killed during the reads, killed during the recording,
    killed with an alert on the wire, then left to finish. The result is one uninterrupted poll's."""
    size = 150 if EXTENDED else 90
    document = fleet(size, datetime.now(UTC))
    state = tmp_path / "state.sqlite"
    store = Store(state)
    log = tmp_path / "serve.log"
    kills: list[str] = []
    with Sandbox(parsed(document), key_pool=1) as sandbox:
        alerts = {"sinks": {"hook": {"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook"}}}
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYHEALTH_")},
            **sandbox.environment(),
            "KEYHEALTH_SQLITE_PATH": str(state),
            "KEYHEALTH_WEBHOOK_SECRET": TEST_SECRET,
            "KEYHEALTH_ALERTS": json.dumps(alerts),
            "KEYHEALTH_HTTP_RETRIES": "1",
            "KEYHEALTH_HTTP_TIMEOUT_SECONDS": "10",
        }
        expected = _reference_incidents(document, environment, tmp_path)
        opened = {(namespace_id, condition) for namespace_id, condition, is_open, _ in expected if is_open}
        assert len(opened) == 2 * size // 3  # a revocation incident per expiring or deleted key

        # 1. Killed while the start-up poll reads keys (each answer slowed down).
        sandbox.faults.latency = 0.05
        first = Serve.start(environment, log)
        reads = sandbox.requests.count(service="keyvault")
        _wait(lambda: sandbox.requests.count(service="keyvault") >= reads + 10, "key reads in flight")
        first.kill()
        kills.append("during the poll's reads")
        assert store.count("namespace_state") == 0 and store.count("incident") == 0
        assert store.integrity() == "ok"
        sandbox.faults.latency = 0.0
        store.expire_leases()

        # 2. Killed while the poll records: some incidents written, not all.
        second = Serve.start(environment, log)
        target = max(1, (round_ + 1) * len(opened) // (ROUNDS + 2))  # a different point each extended round
        _wait(lambda: target <= store.count("incident") < len(opened), "the poll recording incidents", step=0.0005)
        second.kill()
        written = store.count("incident")
        kills.append(f"while recording ({written} of {len(opened)} incidents written)")
        record("restarts: incidents written when killed while recording", total=written, of=len(opened))
        assert store.integrity() == "ok"
        store.expire_leases()

        # 3. Killed with an alert on the wire: the receiver has it, the sender never hears back.
        receiver.delay = 5.0
        third = Serve.start(environment, log)
        _wait(lambda: len(receiver.arrivals) >= 1, "an alert on the wire")
        third.kill()
        kills.append("with an alert on the wire")
        assert store.integrity() == "ok"
        store.expire_leases()

        # 4. Left to finish: every alert delivered, then a graceful stop.
        receiver.delay = 0.0
        fourth = Serve.start(environment, log)
        _wait(lambda: store.count("outbox") == 0 and store.count("incident") >= len(opened), "every alert delivered")
        _wait(lambda: (fourth.health() or {}).get("outcome") == "ok", "a completed poll")
        fourth.stop()

    assert store.integrity() == "ok"
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")
    assert store.incidents() == expected, "the incidents differ from one uninterrupted poll's"
    deliveries = Counter(arrival["id"] for arrival in receiver.arrivals)
    distinct = {arrival["id"]: arrival for arrival in receiver.arrivals}
    pages = Counter((a["namespace"]["id"].lower(), a["condition"]) for a in distinct.values() if a["notice"] == "open")
    assert set(pages) == opened, "an incident was never paged"
    assert max(pages.values()) == 1, "an incident was paged twice (two different alerts)"
    duplicates = sum(count - 1 for count in deliveries.values())
    assert max(deliveries.values()) <= 2 and duplicates <= 1, deliveries.most_common(3)
    record(
        "restarts",
        rounds=1,
        **{"SIGKILLs": len(kills), "graceful stops": 1, "alerts delivered": len(receiver.arrivals)},
        **{"distinct alerts": len(distinct), "duplicate deliveries": duplicates, "incidents": len(expected)},
    )
    record("restarts integrity_check", ok=len(kills) + 1)
    for kill in kills:
        record(f"restarts: killed {kill.split(' (')[0]}", times=1)
