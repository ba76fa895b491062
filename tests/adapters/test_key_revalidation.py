"""A poll confirms keys unchanged since their last full read from the vault's key listing (25 keys a request),
and reads in full every key the listing cannot vouch for.

Against the stand-in over HTTPS with the real KeyClient. The adapter compares Key Vault's `updated` with the
real clock, so the scenario is set a day before it: every write lands well in the past.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.adapters.azure_clients import AzureClients
from monitor.adapters.keyvault import FULL_READ_EVERY, KeyVaultKeys
from monitor.app.monitor import Monitor
from monitor.app.poll import PollResult, poll
from monitor.domain.documents import format_instant
from monitor.domain.model import DeleteKey, KeyVersion, NewVersion, UpdateVersion
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import azure_options, build_monitor
from monitor.entry.config import Settings
from monitor.formats.render import namespace_document
from monitor.sandbox import AsyncStaticTokenCredential, Sandbox
from tests.builders import VAULT, key, namespace, ref, scenario, vault, version

NOW = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
KEYS = 30  # two listing pages
LATER = NOW + timedelta(minutes=15)


def _fleet(*, pinned: bool = False, other_vault: str | None = None) -> Any:
    """KEYS namespaces, each listing its own key in VAULT; `other_vault`: a vault no namespace uses yet, with
    one key, k-other."""
    created = format_instant(NOW - timedelta(days=30))
    namespaces = [namespace(f"sb-{n:02d}", ref(f"k-{n:02d}")) for n in range(KEYS)]
    if pinned:
        namespaces.append(namespace("sb-pinned", ref("k-00", version_id="v1")))
    keys = [key(f"k-{n:02d}", version("v1", created)) for n in range(KEYS)]
    vaults = [vault()]
    if other_vault is not None:
        vaults.append(vault(other_vault))
        keys.append(key("k-other", version("v1", created), vault_uri=other_vault))
    parsed, _ = parse_scenario(scenario(namespaces, keys, vaults=vaults, now=format_instant(NOW)))
    return parsed


def _key_gets(sandbox: Sandbox) -> list[str]:
    """The keys read one by one (GET /keys/{name}/), by name."""
    return sorted(
        r.path.split("/")[2]
        for r in sandbox.requests.select(service="keyvault", method="GET")
        if r.path.count("/") >= 2
    )


def _listings(sandbox: Sandbox) -> int:
    return sum(1 for r in sandbox.requests.select(service="keyvault", method="GET") if r.path.rstrip("/") == "/keys")


def _documents(result: PollResult) -> dict[str, Any]:
    assert result.report is not None
    return {
        n.prediction.namespace.name: json.dumps(namespace_document(n), sort_keys=True) for n in result.report.namespaces
    }


def _run(
    tmp_path: Path,
    steps: Callable[[Sandbox, Monitor], Awaitable[Any]],
    *,
    pinned: bool = False,
    other_vault: str | None = None,
) -> Any:
    async def run() -> Any:
        with Sandbox(_fleet(pinned=pinned, other_vault=other_vault)) as sandbox:
            environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
            monitor = build_monitor(Settings.from_environment(environment))
            try:
                await poll(monitor, now=NOW)
                sandbox.requests.clear()
                return await steps(sandbox, monitor)
            finally:
                assert monitor.close is not None
                await monitor.close()

    return asyncio.run(run())


async def _fresh_poll(sandbox: Sandbox, tmp_path: Path, now: datetime) -> PollResult:
    """A poll by a monitor that has never read anything: every key read in full."""
    environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "fresh.sqlite")}
    monitor = build_monitor(Settings.from_environment(environment))
    try:
        return await poll(monitor, now=now)
    finally:
        assert monitor.close is not None
        await monitor.close()


def test_a_second_poll_confirms_unchanged_keys_from_the_listing(tmp_path: Path):
    async def steps(sandbox: Sandbox, monitor: Monitor) -> tuple[list[str], int, PollResult, PollResult]:
        second = await poll(monitor, now=NOW)
        gets, listings = _key_gets(sandbox), _listings(sandbox)
        return gets, listings, second, await _fresh_poll(sandbox, tmp_path, NOW)

    gets, listings, second, fresh = _run(tmp_path, steps)
    assert gets == [] and listings == 2  # 30 keys: two pages of 25, not 30 GETs
    assert _documents(second) == _documents(fresh)
    assert {d["status_now"] for d in map(json.loads, _documents(second).values())} == {"healthy"}


def test_a_steady_poll_lists_the_keys_it_knows_while_it_lists_the_fleet(tmp_path: Path):
    """The keys earlier polls read are known before the inventory answers: their listings go out at once, and
    the poll waits for the slower of the two, not for one after the other."""

    async def steps(
        sandbox: Sandbox, monitor: Monitor
    ) -> tuple[float, list[float], list[float], list[str], PollResult]:
        sandbox.faults.delay(1.0, service="arm", path="Microsoft.ResourceGraph")
        second = await poll(monitor, now=NOW)
        arm = sandbox.requests.select(service="arm")
        inventory = [r for r in arm if "Microsoft.ResourceGraph" in r.path]
        vaults = [r.received for r in arm if "/providers/Microsoft.KeyVault/vaults" in r.path]
        listed = [
            r.received
            for r in sandbox.requests.select(service="keyvault", method="GET")
            if r.path.rstrip("/") == "/keys"
        ]
        return max(r.received + r.seconds for r in inventory), listed, vaults, _key_gets(sandbox), second

    inventory_answered, listed, vaults, gets, second = _run(tmp_path, steps)
    assert len(listed) == 2 and gets == []
    assert max(listed) < inventory_answered
    assert vaults and max(vaults) < inventory_answered  # the vault's access policies too
    assert {d["status_now"] for d in map(json.loads, _documents(second).values())} == {"healthy"}


def test_a_vault_new_to_the_poll_is_read_after_the_inventory(tmp_path: Path):
    """What was read early covers only the vaults earlier polls knew: a namespace that now lists a key in
    another vault has that vault read too, and is judged on it (not blind)."""
    other = "https://kv-other.vault.azure.net"

    async def steps(sandbox: Sandbox, monitor: Monitor) -> PollResult:
        listed = sandbox.namespace(_fleet().snapshot.namespaces[0].id)
        assert listed is not None
        listed["id"] = listed["id"].rsplit("/", 1)[0] + "/sb-new"
        listed["name"] = "sb-new"
        listed["properties"]["encryption"]["keyVaultProperties"] = [
            {"keyName": "k-other", "keyVaultUri": other, "keyVersion": ""}
        ]
        sandbox.add_namespace(listed)
        return await poll(monitor, now=NOW)

    second = _run(tmp_path, steps, other_vault=other)
    documents = {name: json.loads(text) for name, text in _documents(second).items()}
    assert documents["sb-new"]["status_now"] == "healthy"
    assert documents["sb-00"]["status_now"] == "healthy"


CHANGES = {
    "disabled": UpdateVersion(at=NOW + timedelta(minutes=10), vault=VAULT, key="k-03", enabled=False),
    "new version": NewVersion(
        at=NOW + timedelta(minutes=10),
        vault=VAULT,
        key="k-03",
        version=KeyVersion("v2", NOW + timedelta(minutes=10), exp=NOW + timedelta(hours=2)),
    ),
    "operations narrowed": UpdateVersion(at=NOW + timedelta(minutes=10), vault=VAULT, key="k-03", key_ops=("sign",)),
    "expiry set": UpdateVersion(at=NOW + timedelta(minutes=10), vault=VAULT, key="k-03", exp=NOW + timedelta(hours=1)),
    "deleted": DeleteKey(at=NOW + timedelta(minutes=10), vault=VAULT, key="k-03"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_key_written_since_its_last_read_is_read_in_full(tmp_path: Path, change: Any):
    """Whatever the write, the listing shows another `updated` (or no key): the key is read again, and the
    poll judges exactly as a monitor that read everything afresh."""

    async def steps(sandbox: Sandbox, monitor: Monitor) -> tuple[list[str], PollResult, PollResult]:
        sandbox.apply(change)
        sandbox.clock.set(LATER)
        second = await poll(monitor, now=LATER)
        gets = _key_gets(sandbox)
        return gets, second, await _fresh_poll(sandbox, tmp_path, LATER)

    gets, second, fresh = _run(tmp_path, steps)
    assert set(gets) == {"k-03"}
    assert _documents(second) == _documents(fresh)
    changed = json.loads(_documents(second)["sb-03"])
    assert changed["status_now"] != "healthy" or changed["revoked_at_earliest"] is not None  # the change is seen


def test_a_pinned_reference_is_read_every_poll(tmp_path: Path):
    """A pinned version can be disabled while the key's current version, which the listing shows, is not."""

    async def steps(sandbox: Sandbox, monitor: Monitor) -> tuple[list[str], PollResult]:
        sandbox.apply(NewVersion(at=NOW + timedelta(minutes=1), vault=VAULT, key="k-00", version=KeyVersion("v2", NOW)))
        sandbox.apply(
            UpdateVersion(at=NOW + timedelta(minutes=2), vault=VAULT, key="k-00", version="v1", enabled=False)
        )
        sandbox.clock.set(LATER)
        second = await poll(monitor, now=LATER)
        return _key_gets(sandbox), second

    gets, second = _run(tmp_path, steps, pinned=True)
    assert "k-00" in gets and len(gets) < KEYS
    assert json.loads(_documents(second)["sb-pinned"])["status_now"] != "healthy"


def test_a_refused_listing_falls_back_to_reading_each_key_and_is_not_asked_again(tmp_path: Path):
    async def steps(sandbox: Sandbox, monitor: Monitor) -> tuple[list[str], int, PollResult, list[str], int]:
        refusal = sandbox.faults.forbid(VAULT, path=r"^/keys/?$")
        second = await poll(monitor, now=NOW)
        gets, refused = _key_gets(sandbox), refusal.matched
        sandbox.requests.clear()
        await poll(monitor, now=NOW)
        return gets, refused, second, _key_gets(sandbox), refusal.matched

    gets, refused, second, third_gets, refused_after = _run(tmp_path, steps)
    assert refused == 1 and len(gets) == KEYS
    assert {d["status_now"] for d in map(json.loads, _documents(second).values())} == {"healthy"}
    assert len(third_gets) == KEYS and refused_after == 1  # not listed again for LIST_REFUSED_FOR


def test_a_listing_that_fails_midway_keeps_what_its_first_page_confirmed(tmp_path: Path):
    async def steps(sandbox: Sandbox, monitor: Monitor) -> tuple[list[str], PollResult]:
        sandbox.faults.respond(500, service="keyvault", path=r"^/keys/?$", next_page_only=True)
        second = await poll(monitor, now=NOW)
        return _key_gets(sandbox), second

    gets, second = _run(tmp_path, steps)
    assert len(gets) == KEYS - 25  # the first page's 25 were confirmed; the rest read one by one
    assert {d["status_now"] for d in map(json.loads, _documents(second).values())} == {"healthy"}


def test_full_reads_expire_and_recent_writes_are_never_confirmed(tmp_path: Path):
    """Within FULL_READ_EVERY a key is confirmed from the listing; after it, read again. A key written less than
    a minute ago (by the real clock) is never confirmed: `updated` has whole seconds."""
    real_now = datetime.now(UTC).replace(microsecond=0)
    created = format_instant(NOW - timedelta(days=30))
    keys = [key(f"k-{n}", version("v1", created)) for n in range(3)]
    keys.append(key("k-fresh", version("v1", format_instant(real_now - timedelta(seconds=5)))))
    namespaces = [namespace("sb", ref("k-0"), ref("k-1"), ref("k-2"))]
    parsed, _ = parse_scenario(scenario(namespaces, keys, now=format_instant(real_now)))
    moment = [0.0]

    async def run() -> tuple[set[str], set[str], set[str]]:
        with Sandbox(parsed) as sandbox:
            settings = Settings.from_environment(sandbox.environment())
            clients = AzureClients(AsyncStaticTokenCredential(), azure_options(settings))
            reader = KeyVaultKeys(clients, clock=lambda: moment[0])
            try:
                names = ["k-0", "k-1", "k-2", "k-fresh"]
                for name in names:
                    assert await reader.get_key(VAULT, name) is not None
                confirmed = set(await reader.revalidate(VAULT, names))
                moment[0] = 0.74 * FULL_READ_EVERY  # before the earliest a staggered full read falls due
                still = set(await reader.revalidate(VAULT, names))
                moment[0] = FULL_READ_EVERY
                expired = set(await reader.revalidate(VAULT, names))
                return confirmed, still, expired
            finally:
                await clients.close()

    confirmed, still, expired = asyncio.run(run())
    assert confirmed == still == {"k-0", "k-1", "k-2"}
    assert expired == set()


# -- full reads shared through the state store: a poll on another (or a restarted) instance


def _instance(sandbox: Sandbox, store: dict[str, str], name: str) -> Monitor:
    environment = {**sandbox.environment(), **store}
    return dataclasses.replace(build_monitor(Settings.from_environment(environment)), instance=name)


def _across_instances(store: dict[str, str], change: Any = None) -> tuple[list[str], int, PollResult, PollResult]:
    """Instance a polls; then b, a process that has read nothing itself, polls the same store (after `change`).
    Returns b's key GETs and listings, b's poll, and the poll of a monitor with a store of its own."""

    async def run() -> tuple[list[str], int, PollResult, PollResult]:
        with Sandbox(_fleet()) as sandbox:
            first = _instance(sandbox, store, "a")
            try:
                await poll(first, now=NOW)
            finally:
                assert first.close is not None
                await first.close()
            when = NOW
            if change is not None:
                sandbox.apply(change)
                when = LATER
                sandbox.clock.set(when)
            sandbox.requests.clear()
            second = _instance(sandbox, store, "b")
            try:
                polled = await poll(second, now=when + timedelta(minutes=5))
            finally:
                assert second.close is not None
                await second.close()
            gets, listings = _key_gets(sandbox), _listings(sandbox)
            with tempfile.TemporaryDirectory() as alone:
                return gets, listings, polled, await _fresh_poll(sandbox, Path(alone), when + timedelta(minutes=5))

    return asyncio.run(run())


def test_a_fresh_instance_confirms_from_the_listing_what_another_instance_read(store_settings: dict[str, str]):
    """What a's poll learnt of each key is in the store: b's first poll reads the listing (2 pages for 30 keys),
    no key in full, and judges as a monitor that read everything itself."""
    gets, listings, polled, alone = _across_instances(store_settings)
    assert gets == [] and listings == 2
    assert polled.ran and _documents(polled) == _documents(alone)


def test_a_fresh_instance_still_sees_a_key_written_after_the_other_read_it(store_settings: dict[str, str]):
    """The stored records are a cache the listing checks: a key disabled after a's read is read in full by b."""
    gets, _, polled, alone = _across_instances(store_settings, CHANGES["disabled"])
    assert set(gets) == {"k-03"}  # its current version, then its versions (it is unusable now)
    assert _documents(polled) == _documents(alone)
    assert json.loads(_documents(polled)["sb-03"])["status_now"] != "healthy"


def test_records_past_due_forged_or_misfiled_are_not_recalled():
    """A record whose full read is due (by the wall clock the instances share), one that is not a record, and one
    filed under another key's name are all left out: those keys are read in full."""
    real_now = datetime.now(UTC).replace(microsecond=0)
    created = format_instant(NOW - timedelta(days=30))
    parsed, _ = parse_scenario(
        scenario(
            [namespace("sb", ref("k-0"), ref("k-1"))],
            [key("k-0", version("v1", created)), key("k-1", version("v1", created))],
            now=format_instant(real_now),
        )
    )
    wall = [1_000_000.0]

    async def run() -> tuple[int, int, int, int]:
        with Sandbox(parsed) as sandbox:
            settings = Settings.from_environment(sandbox.environment())
            clients = AzureClients(AsyncStaticTokenCredential(), azure_options(settings))
            try:
                reader = KeyVaultKeys(clients, clock=lambda: 0.0, wall=lambda: wall[0])
                for name in ("k-0", "k-1"):
                    await reader.get_key(VAULT, name)
                records = reader.take_changed_records()
                again = reader.take_changed_records()
                (vault,) = records
                fresh = KeyVaultKeys(clients, clock=lambda: 50.0, wall=lambda: wall[0] + 50)
                recalled = fresh.recall(records)
                confirmed = len(await fresh.revalidate(VAULT, ["k-0", "k-1"]))
                late = KeyVaultKeys(clients, clock=lambda: 0.0, wall=lambda: wall[0] + FULL_READ_EVERY)
                past_due = late.recall(records)
                keys = records[vault]["keys"]
                forged = {vault: {**records[vault], "keys": {"k-0": ["not", "a", "record"], "k-1": keys["k-0"]}}}
                bad = KeyVaultKeys(clients, clock=lambda: 0.0, wall=lambda: wall[0]).recall(forged)
                return len(again), recalled + 10 * confirmed, past_due, bad
            finally:
                await clients.close()

    again, recalled_and_confirmed, past_due, bad = asyncio.run(run())
    assert again == 0  # nothing changed since the first take
    assert recalled_and_confirmed == 2 + 10 * 2
    assert past_due == 0 and bad == 0
