"""The poll's bookkeeping in the state store: the last-complete-poll mark, and the poll lease kept (or lost)
while a long poll runs. Real SDK clients against the stand-in; SQLite and Azurite stores."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from monitor.app.monitor import Monitor
from monitor.app.poll import poll
from monitor.app.state import PollMark
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.builders import key, namespace, ref, scenario
from tests.hardening.support import FAST_AZURE, parsed

LISTING = "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.ServiceBus/namespaces$"


def _monitor(sandbox: Sandbox, store: dict[str, str], instance: str = "instance-a") -> Monitor:
    environment = {**sandbox.environment(), **FAST_AZURE, "KEYHEALTH_HTTP_RETRIES": "0", **store}
    return dataclasses.replace(build_monitor(Settings.from_environment(environment)), instance=instance)


def _fleet() -> dict[str, Any]:
    return scenario([namespace("sb-one", ref("k1")), namespace("sb-two", ref("k2"))], [key("k1"), key("k2")])


def test_a_complete_poll_leaves_its_mark_and_a_blind_one_does_not(store_settings: dict[str, str]):
    """After a poll that saw the whole fleet the mark names this instance and the poll's time; a poll that
    could not list the namespaces (fleet-blind) leaves the earlier mark as it was."""

    async def run() -> tuple[PollMark | None, PollMark | None, PollMark | None, Any]:
        async with Sandbox(parsed(_fleet())) as sandbox:
            monitor = _monitor(sandbox, store_settings)
            t0 = sandbox.clock.now()
            try:
                before = await monitor.store.last_poll_completed()
                assert (await poll(monitor, now=t0)).ran
                complete = await monitor.store.last_poll_completed()
                sandbox.faults.respond(500, service="arm", path=LISTING)
                sandbox.faults.respond(500, service="arm", path="/providers/Microsoft.ResourceGraph/resources")
                blind = await poll(monitor, now=t0 + timedelta(minutes=5))
                assert blind.ran and blind.report is not None and blind.report.fleet_blind
                after_blind = await monitor.store.last_poll_completed()
            finally:
                assert monitor.close is not None
                await monitor.close()
        return before, complete, after_blind, t0

    before, complete, after_blind, t0 = asyncio.run(run())
    assert before is None
    assert complete == PollMark("instance-a", t0)
    assert after_blind == complete


def test_a_poll_that_lost_its_lease_records_nothing(store_settings: dict[str, str]):
    """Instance A's poll is slow (paused, say) past its lease; B takes the lease over and polls. When A's
    reads come back it finds its lease gone (a later fencing token) and writes nothing: the stored
    judgements, the snapshot and the mark are B's."""

    async def run() -> tuple[Any, Any, PollMark | None, set[Any], Any]:
        async with Sandbox(parsed(_fleet())) as sandbox:
            first, second = _monitor(sandbox, store_settings, "instance-a"), _monitor(sandbox, store_settings, "b")
            t0 = sandbox.clock.now()
            try:
                sandbox.faults.latency = 0.3
                slow = asyncio.ensure_future(poll(first, now=t0))
                for _ in range(600):  # a liveness bound, not a speed target
                    lease = await second.store.get_lease("poll")
                    if lease is not None and lease.holder == "instance-a":
                        break
                    await asyncio.sleep(0.01)
                taken_over = await poll(second, now=t0 + timedelta(minutes=5))
                lost = await slow
                mark = await second.store.last_poll_completed()
                judged = {state.evaluated_at for state in await second.store.list_namespace_states()}
                snapshot = await second.store.get_snapshot()
            finally:
                for monitor in (first, second):
                    assert monitor.close is not None
                    await monitor.close()
        return lost, taken_over, mark, judged, (snapshot.taken_at if snapshot else None, t0)

    lost, taken_over, mark, judged, (taken_at, t0) = asyncio.run(run())
    assert taken_over.ran and not lost.ran
    assert mark == PollMark("b", t0 + timedelta(minutes=5))
    assert judged == {t0 + timedelta(minutes=5)} and taken_at == t0 + timedelta(minutes=5)


def test_an_event_before_the_first_poll_is_no_state_and_after_it_a_strangers_vault_is_ignored(
    store_settings: dict[str, str],
):
    """Before any poll stored the inventory nothing can tell a stranger's vault from the fleet's: no-state
    (the next poll covers it). After one, the same event is ignored, and the fleet's own key is evaluated;
    neither of the first two costs a Key Vault request."""
    from monitor.app.events import handle_event
    from monitor.formats.events import KeyVaultEvent, parse_event
    from tests.builders import VAULT, key_event

    fleet_key = parse_event(key_event("Microsoft.KeyVault.KeyNewVersionCreated", VAULT, "k1"))
    stranger = parse_event(
        key_event("Microsoft.KeyVault.KeyNewVersionCreated", "https://kv-stranger.vault.azure.net", "k1", "e-2")
    )

    async def run() -> tuple[list[str], int]:
        async with Sandbox(parsed(_fleet())) as sandbox:
            monitor = _monitor(sandbox, store_settings)
            now = sandbox.clock.now()
            try:
                assert isinstance(fleet_key, KeyVaultEvent) and isinstance(stranger, KeyVaultEvent)
                outcomes = [(await handle_event(monitor, fleet_key, now=now)).outcome.value]
                reads = sandbox.requests.count(service="keyvault")
                assert (await poll(monitor, now=now)).ran
                for event in (stranger, fleet_key):
                    outcomes.append((await handle_event(monitor, event, now=now)).outcome.value)
            finally:
                assert monitor.close is not None
                await monitor.close()
        return outcomes, reads

    outcomes, reads_before_the_poll = asyncio.run(run())
    assert outcomes == ["no-state", "ignored", "evaluated"]
    assert reads_before_the_poll == 0


@pytest.mark.parametrize("fail", [False, True], ids=["indexed ahead", "store fails ahead"])
def test_a_first_poll_indexes_its_namespaces_while_it_reads_and_a_store_that_cannot_still_indexes_them(
    store_settings: dict[str, str], fail: bool
):
    """The namespaces the store holds no state of are handed to index_new_namespaces once listed, finished before
    any state is written; a later poll, with every state stored, hands none. When the store fails there, the
    poll goes on and the index still finds every namespace (written with the states)."""
    from monitor.domain.errors import StateStoreError
    from tests.builders import VAULT

    async def run() -> tuple[list[Any], list[str]]:
        calls: list[Any] = []
        async with Sandbox(parsed(_fleet())) as sandbox:
            monitor = _monitor(sandbox, store_settings)
            store = monitor.store
            index_new, put_states = store.index_new_namespaces, store.put_namespace_states

            async def indexing(namespaces: Any) -> None:
                calls.append(("ahead", sorted(n for n, _ in namespaces)))
                if fail:
                    raise StateStoreError("index", "refused")
                await index_new(namespaces)
                calls.append("indexed")

            async def putting(states: Any, **kwargs: Any) -> list[str]:
                calls.append("put")
                return await put_states(states, **kwargs)

            object.__setattr__(store, "index_new_namespaces", indexing)
            object.__setattr__(store, "put_namespace_states", putting)
            now = sandbox.clock.now()
            try:
                assert (await poll(monitor, now=now)).ran
                calls.append("second poll")
                assert (await poll(monitor, now=now + timedelta(minutes=5))).ran
                found = await store.namespaces_for_key(VAULT, "k1") + await store.namespaces_for_key(VAULT, "k2")
            finally:
                assert monitor.close is not None
                await monitor.close()
        return calls, [n.rsplit("/", 1)[-1] for n in found]

    ids = ["sb-one", "sb-two"]
    calls, found = asyncio.run(run())
    told = [c if isinstance(c, str) else (c[0], [i.rsplit("/", 1)[-1] for i in c[1]]) for c in calls]
    if fail:
        assert told == [("ahead", ids), "put", "second poll"]
    else:
        assert told == [("ahead", ids), "indexed", "put", "second poll"]
    assert found == ids


def test_a_steady_poll_records_pages_while_the_inventory_is_read_and_ends_as_if_judged_at_the_end(
    store_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """Resource Graph answers 2 namespaces a page. In a steady poll, page 2 is not fetched before a judgement of
    page 1 is recorded (it waits for that: a poll judging only at the end would never record it). The report and
    the stored states are what a scan judged at the end says: k3, disabled since the last poll, is read in full
    and its namespace judged with the whole snapshot; so is the one pinned to a version."""
    import monitor.adapters.resourcegraph as resource_graph
    import monitor.app.monitor as monitor_module
    import monitor.app.poll as poll_module
    from monitor.app.reading import check
    from monitor.domain.model import UpdateVersion
    from monitor.formats.render import namespace_document
    from tests.builders import VAULT

    monkeypatch.setattr(resource_graph, "PAGE_SIZE", 2)
    fleet = scenario(
        [
            *(namespace(f"sb-{n}", ref("k1"), ref("k2")) for n in "abcd"),
            namespace("sb-e", ref("k2")),
            namespace("sb-f", ref("k4", version_id="v1")),
            namespace("sb-g", ref("k3")),
            namespace("sb-h", ref("k1"), ref("k3")),
        ],
        [key("k1"), key("k2"), key("k3"), key("k4")],
    )
    events: list[str] = []
    recorded = asyncio.Event()
    page, record = resource_graph._page, monitor_module.record_judgements

    async def paging(client: Any, body: Any) -> Any:
        if "$skipToken" in body["options"] and events and events[0] == "second poll":
            try:
                await asyncio.wait_for(recorded.wait(), 30)
            except TimeoutError:
                events.append("gave up waiting")
        events.append("page")
        return await page(client, body)

    async def recording(monitor: Monitor, reports: Any, **kwargs: Any) -> tuple[str, ...]:
        if events and events[0] == "second poll":
            events.append(f"record {len(reports)}")
            recorded.set()
        return await record(monitor, reports, **kwargs)

    monkeypatch.setattr(resource_graph, "_page", paging)
    monkeypatch.setattr(poll_module, "record_judgements", recording)

    async def run() -> tuple[Any, Any, dict[str, Any]]:
        async with Sandbox(parsed(fleet)) as sandbox:
            monitor = _monitor(sandbox, store_settings)
            now = sandbox.clock.now()
            try:
                assert (await poll(monitor, now=now)).ran
                later = now + timedelta(minutes=5)
                sandbox.apply(UpdateVersion(at=now, vault=VAULT, key="k3", enabled=False))
                events.clear()
                events.append("second poll")
                steady = await poll(monitor, now=later)
                events.append("done")
                _, judged_at_the_end = await check(monitor.readers, now=later, thresholds=monitor.thresholds)
                states = {s.id: s.document for s in await monitor.store.list_namespace_states()}
            finally:
                assert monitor.close is not None
                await monitor.close()
        return steady, judged_at_the_end, states

    steady, judged_at_the_end, states = asyncio.run(run())
    assert "gave up waiting" not in events
    assert events[:3] == ["second poll", "page", "record 2"]
    assert events[: events.index("done")].count("page") == 4
    assert steady.report is not None
    assert steady.report.namespaces == judged_at_the_end.namespaces
    statuses = {n.prediction.namespace.name: n.prediction.status_now.value for n in steady.report.namespaces}
    assert statuses["sb-g"] == "revoked" and statuses["sb-h"] == "degraded" and statuses["sb-a"] == "healthy"
    assert {n.rsplit("/", 1)[-1] for n in steady.changed} == {"sb-g", "sb-h"}
    assert states == {n.prediction.namespace.id: namespace_document(n) for n in steady.report.namespaces}


def test_a_first_poll_reads_the_keys_of_a_page_while_the_next_is_fetched(
    store_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """Resource Graph answers 2 namespaces a page; page 2 is not fetched before a key page 1 names was read (it
    waits for that: a poll reading keys only once the whole fleet is listed would never read one). k-shared is
    pinned to an older version only by a namespace of a later page: it is read again with that version, and
    every namespace is judged as a poll listing the fleet in one page judges it. No vault's keys are listed: the
    keys were all read in full moments before."""
    import monitor.adapters.resourcegraph as resource_graph
    from monitor.adapters import keyvault
    from tests.builders import version

    fleet = scenario(
        [
            namespace("sb-a", ref("k-shared"), ref("k1")),
            namespace("sb-b", ref("k1")),
            namespace("sb-c", ref("k2")),
            namespace("sb-d", ref("k-shared", version_id="v1")),
            namespace("sb-e", ref("k3")),
        ],
        [
            key("k-shared", version("v1"), version("v2", created="2026-10-01T00:00:00Z")),
            key("k1"),
            key("k2"),
            key("k3"),
        ],
    )
    events: list[str] = []
    key_read = asyncio.Event()
    page, get_key = resource_graph._page, keyvault.KeyVaultKeys.get_key

    async def paging(client: Any, body: Any) -> Any:
        if "$skipToken" in body["options"] and events:
            try:
                await asyncio.wait_for(key_read.wait(), 30)
            except TimeoutError:
                events.append("gave up waiting")
        events.append("page")
        return await page(client, body)

    async def reading(self: Any, vault_uri: str, name: str, **kwargs: Any) -> Any:
        found = await get_key(self, vault_uri, name, **kwargs)
        if events:
            events.append(f"read {name} {sorted(kwargs.get('pinned_versions', ()))}")
            key_read.set()
        return found

    monkeypatch.setattr(keyvault.KeyVaultKeys, "get_key", reading)

    async def run(page_size: int) -> Any:
        monkeypatch.setattr(resource_graph, "PAGE_SIZE", page_size)
        monkeypatch.setattr(resource_graph, "_page", paging if page_size == 2 else page)
        async with Sandbox(parsed(fleet)) as sandbox:
            monitor = _monitor(sandbox, store_settings)
            try:
                events.append("first poll")
                result = await poll(monitor, now=sandbox.clock.now())
                events.append("done")
            finally:
                assert monitor.close is not None
                await monitor.close()
            # A key read in full a moment ago needs no vault listing to vouch for it.
            listings = [r for r in sandbox.requests.select(service="keyvault") if r.path.rstrip("/").endswith("/keys")]
        return result, listings

    paged, listings = asyncio.run(run(2))
    logged, events[:] = list(events), []
    whole, _ = asyncio.run(run(1000))  # on the same store: its key records make this one a fresh instance's poll
    assert listings == []
    assert "gave up waiting" not in logged
    assert logged[:2] == ["first poll", "page"] and logged[2].startswith("read ")
    reads = [e for e in logged if e.startswith("read k-shared")]
    assert reads == ["read k-shared []", "read k-shared ['v1']"]  # the pin came a page later: read again
    assert paged.report is not None and whole.report is not None
    assert paged.report.namespaces == whole.report.namespaces
    statuses = {n.prediction.namespace.name: n.prediction.status_now.value for n in paged.report.namespaces}
    assert set(statuses.values()) == {"healthy"}


def test_geo_dr_pairings_are_read_once_and_a_fresh_instance_recalls_them_from_the_store(
    store_settings: dict[str, str],
):
    """The first poll lists each CMK namespace's disasterRecoveryConfigs once and reads the partner; its next
    poll and a fresh instance's poll (on the same store) read none again, and judge the pair alike: the
    partner lacks access, so a failover would revoke it, and the alerting conditions see that."""
    from monitor.domain.incidents import Condition, observe

    partner = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-dr/providers/" + (
        "Microsoft.ServiceBus/namespaces/sb-one-dr"
    )
    pairing = {"alias": "one", "partner": partner, "partner_identity": {"principal_id": "p-dr"}}
    fleet = scenario(
        [namespace("sb-one", ref("k1"), geo_dr=pairing), namespace("sb-two", ref("k2"))], [key("k1"), key("k2")]
    )

    async def run() -> tuple[list[int], list[Any]]:
        async with Sandbox(parsed(fleet)) as sandbox:
            first, fresh = _monitor(sandbox, store_settings, "instance-a"), _monitor(sandbox, store_settings, "b")
            now = sandbox.clock.now()
            reads, reports = [], []
            try:
                for monitor, minutes in ((first, 0), (first, 5), (fresh, 10)):
                    result = await poll(monitor, now=now + timedelta(minutes=minutes))
                    assert result.ran and result.report is not None
                    reports.append(result.report)
                    reads.append(len(sandbox.requests.select(service="arm", path="/disasterRecoveryConfigs")))
                    sandbox.requests.clear()
            finally:
                for monitor in (first, fresh):
                    assert monitor.close is not None
                    await monitor.close()
        return reads, reports

    reads, reports = asyncio.run(run())
    assert reads == [2, 0, 0]
    for report in reports:
        one = next(n for n in report.namespaces if n.prediction.namespace.name == "sb-one")
        assert "geo-dr-partner-cannot-use-key" in {f.code.value for f in one.findings}
        failover = observe(one)[Condition.FAILOVER]
        assert failover is not None and failover != "held"
