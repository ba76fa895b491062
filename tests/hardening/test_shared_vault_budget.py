"""One request share per vault for all instances: two monitors built as deployed (build_monitor), on the same
SQLite file or the same Azurite tables, read one vault's keys at once through the real SDK against a stand-in
that enforces the vault's limit. Counted where the requests arrive (the stand-in's request log), the two
together stay near one share in every window and none is throttled; without the shared budget they take
a share each.

The bound allows 0.3 shares over: the budget is granted per tenth of the window (a window that straddles
two tenths may see 1.1 shares), and requests let through while connections were still opening can reach
the vault together later, at most a tenth of the share an instance (its in-flight cap): 0.2 for two."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.adapters.throttle import SLICES_PER_WINDOW, VaultRateLimiter
from monitor.domain.scenario import parse_scenario
from monitor.sandbox import RateLimit, Sandbox
from tests.adapters.state.support import Azurite
from tests.builders import key, namespace, ref, scenario, version
from tests.hardening.fuzzing import record

VAULT = "https://kv-shared.vault.azure.net"
KEYS = 60
ROUNDS = 5  # each instance reads every key this many times
WINDOW = 2.0  # the vault's limit window in these tests (Key Vault's is 10 s)
LIMIT = 400  # requests per WINDOW the stand-in allows the vault
SHARE = 0.5
INSTANCES = 2
# Any window of the vault's length, at the vault: the share, a tenth for straddling two slices, and a tenth
# an instance let through before its connections opened (see above).
MOST_PER_WINDOW = math.floor(LIMIT * SHARE * (1 + (1 + INSTANCES) / SLICES_PER_WINDOW))


@pytest.fixture
def shared_vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    http_challenge_cache.clear()
    keys = [key(f"k{n}", version(f"v{n}"), vault_uri=VAULT) for n in range(KEYS)]
    namespaces = [namespace(f"sb-{n}", ref(f"k{n}", vault_uri=VAULT)) for n in range(KEYS)]
    document = scenario(namespaces, keys, vaults=[{"uri": VAULT, "access": {}}])
    document["vaults"][0]["access"] = {"00000000-0000-0000-0000-00000000aaaa": ["get", "wrapKey", "unwrapKey"]}
    parsed, _ = parse_scenario(document)
    with Sandbox(parsed, rate_limit=RateLimit(LIMIT, WINDOW)) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        yield running
    http_challenge_cache.clear()


def _use_store(kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("KEYHEALTH_STATE_STORE", kind)
    if kind == "sqlite":
        monkeypatch.setenv("KEYHEALTH_SQLITE_PATH", str(tmp_path / "state.sqlite"))
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        monkeypatch.setenv("KEYHEALTH_TABLES_CONNECTION_STRING", azurite.connection_string)
        monkeypatch.setenv("KEYHEALTH_TABLE_PREFIX", f"b{uuid.uuid4().hex[:12]}")


def _scale_down(limiter: VaultRateLimiter) -> None:
    """The stand-in's limit and window instead of Key Vault's (no bucket exists yet: nothing to resize)."""
    limiter.window = WINDOW
    limiter.software_limit = limiter.hsm_limit = LIMIT
    limiter.share = SHARE


def _read_from_two_instances(shared: bool) -> list[VaultRateLimiter]:
    from monitor.entry.bootstrap import build_monitor
    from monitor.entry.config import Settings

    async def instance(monitor: object) -> None:
        keys = monitor.readers.keys  # type: ignore[attr-defined]
        for _ in range(ROUNDS):
            found = await asyncio.gather(*(keys.get_key(VAULT, f"k{n}") for n in range(KEYS)))
            assert all(k is not None for k in found)

    async def run() -> list[VaultRateLimiter]:
        monitors = [build_monitor(Settings.from_environment()) for _ in range(INSTANCES)]
        limiters = [m.readers.keys._clients.limiter for m in monitors]  # type: ignore[attr-defined]
        for limiter in limiters:
            _scale_down(limiter)
            if not shared:
                limiter._budget = None  # each instance on its own: the control
        try:
            await asyncio.gather(*(instance(m) for m in monitors))
        finally:
            for m in monitors:
                assert m.close is not None
                await m.close()
        return limiters

    return asyncio.run(run())


def _busiest_window(stamps: list[float]) -> int:
    stamps = sorted(stamps)
    busiest, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= WINDOW:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


@pytest.mark.parametrize("kind", ["sqlite", "tables"])
def test_two_instances_on_one_store_stay_within_one_share(
    kind: str, shared_vault: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
):
    _use_store(kind, monkeypatch, tmp_path, request)
    limiters = _read_from_two_instances(shared=True)
    records = [r for r in shared_vault.requests if r.service == "keyvault"]
    assert sum(1 for r in records if r.status == 200) >= 2 * KEYS * ROUNDS
    assert shared_vault.requests.count(service="keyvault", status=429) == 0
    busiest = _busiest_window([r.received for r in records])
    record(f"shared budget.{kind}", busiest_window=busiest, share=int(LIMIT * SHARE), requests=len(records))
    assert busiest <= MOST_PER_WINDOW
    assert all(limiter.budget_calls > 0 for limiter in limiters)  # both drew from the store


def test_without_the_shared_budget_two_instances_take_a_share_each(
    shared_vault: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
):
    """The control: the same reads, each instance pacing on its own, go well over one share."""
    _use_store("sqlite", monkeypatch, tmp_path, request)
    _read_from_two_instances(shared=False)
    records = [r for r in shared_vault.requests if r.service == "keyvault"]
    busiest = _busiest_window([r.received for r in records])
    record("shared budget.control", busiest_window=busiest, share=int(LIMIT * SHARE), requests=len(records))
    assert busiest > 1.5 * LIMIT * SHARE
