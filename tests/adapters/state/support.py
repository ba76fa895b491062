"""Helpers for the state store tests: a real Azurite, store openers, and realistic documents to store."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from monitor.app.state import NamespaceState, StateStore
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.model import KeyRef, Namespace, NamespaceIdentity, Scenario, Snapshot
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from monitor.formats.render import namespace_document

ROOT = Path(__file__).resolve().parents[3]
AZURITE_TABLE = ROOT / "node_modules" / ".bin" / "azurite-table"
# Azurite's published development account: a well-known key, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
T0 = datetime(2026, 11, 22, tzinfo=UTC)

StoreOpener = Callable[[], AbstractAsyncContextManager[StateStore]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Azurite:
    """An azurite-table process on a free loopback port, in memory, for one test session."""

    def __init__(self, workdir: Path) -> None:
        if not AZURITE_TABLE.exists():
            pytest.fail(
                f"Azurite is not installed ({AZURITE_TABLE.relative_to(ROOT)} is missing): "
                "run `npm ci` at the repository root (`make test` does it), then run the tests again.",
                pytrace=False,
            )
        self.port = free_port()
        self._log = workdir / "azurite.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(AZURITE_TABLE),
                    "--tableHost",
                    "127.0.0.1",
                    "--tablePort",
                    str(self.port),
                    "--inMemoryPersistence",
                    "--silent",
                    "--disableTelemetry",  # no network here, and tests phone nobody
                ],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_listening(timeout=60.0)

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"azurite-table exited with {self._process.returncode}: {self._log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"azurite-table did not listen on port {self.port} within {timeout:.0f} s: {self._log.read_text()}")

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def sqlite_opener(path: Path) -> StoreOpener:
    """Opens a new SqliteStateStore on `path` each time: several openers share the file, as processes do."""
    from monitor.adapters.state_sqlite import SqliteStateStore

    @asynccontextmanager
    async def open_store() -> AsyncIterator[StateStore]:
        store = SqliteStateStore(path)
        try:
            yield store
        finally:
            await store.close()

    return open_store


def tables_opener(azurite: Azurite, table_prefix: str) -> StoreOpener:
    """Opens a new TableStateStore on Azurite each time, over the same tables (instances of one app)."""
    from monitor.adapters.state_tables import TableStateStore

    @asynccontextmanager
    async def open_store() -> AsyncIterator[StateStore]:
        store = TableStateStore.from_connection_string(azurite.connection_string, table_prefix=table_prefix)
        try:
            yield store
        finally:
            await store.close()

    return open_store


def run(open_store: StoreOpener, check: Callable[[StateStore], Awaitable[None]]) -> None:
    """Open a store, run `check` on it in a fresh event loop, close the store."""

    async def main() -> None:
        async with open_store() as store:
            await check(store)

    asyncio.run(main())


@cache
def _fleet_documents() -> tuple[tuple[Namespace, str], ...]:
    document = json.loads((ROOT / "examples" / "fleet.json").read_text(encoding="utf-8"))
    scenario, _ = parse_scenario(document)
    report = evaluate(scenario, Thresholds())
    return tuple((n.prediction.namespace, json.dumps(namespace_document(n))) for n in report.namespaces)


def fleet_states(evaluated_at: datetime = T0) -> list[NamespaceState]:
    """One state a namespace of examples/fleet.json, each document exactly as monitor.formats.render makes it."""
    return [
        NamespaceState.of(namespace, json.loads(document), evaluated_at=evaluated_at)
        for namespace, document in _fleet_documents()
    ]


def state(
    name: str, *keys: tuple[str, str], evaluated_at: datetime = T0, subscription: str = "sub-1", **fields: Any
) -> NamespaceState:
    """A small hand-made state listing `keys` as (vault URI, key name)."""
    namespace_id = f"/subscriptions/{subscription}/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/{name}"
    document = {"id": namespace_id, "name": name, "status_now": "healthy", "findings": [], **fields}
    return NamespaceState(document=document, evaluated_at=evaluated_at, key_ids=frozenset(keys))


def large_scenario_document(namespaces: int = 10_000, seed: int = 7) -> dict[str, object]:
    """A scenario document of a fleet of `namespaces` (10,000: 8.6 MB of JSON, 1.6 MB compressed).

    Principal ids and tags are random so it does not compress to nothing: the store must really
    split it across entities.
    """
    rng = random.Random(seed)

    def guid() -> str:
        h = rng.getrandbits(128).to_bytes(16, "big").hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    fleet = []
    for n in range(namespaces):
        subscription = guid()
        vault = f"https://kv-{n % 97}.vault.azure.net"
        group = f"/subscriptions/{subscription}/resourceGroups/rg-{n}/providers"
        identity = f"{group}/Microsoft.ManagedIdentity/userAssignedIdentities/id-{n}"
        fleet.append(
            Namespace(
                id=f"{group}/Microsoft.ServiceBus/namespaces/sb-{n}",
                name=f"sb-{n}",
                keys=(
                    KeyRef(vault, f"key-{n}"),
                    KeyRef(vault, f"key-{n}-b", version=rng.getrandbits(128).to_bytes(16).hex(), identity=identity),
                ),
                identity=NamespaceIdentity(principal_id=guid(), user_assigned={identity: guid()}),
                tags={"owner": guid(), "cost-centre": str(rng.randrange(10**6))},
            )
        )
    return scenario_document(
        Scenario(now=T0, snapshot=Snapshot(namespaces=tuple(fleet)), horizon=T0 + timedelta(days=365))
    )
