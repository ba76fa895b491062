"""The StateStore contract: every behaviour here holds for the SQLite store and the Table store alike."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import timedelta

import pytest

from bench.fleet_bench import build_fleet
from monitor.app.state import (
    BUDGET_KEPT,
    Incident,
    Lease,
    NamespaceState,
    OutboxEntry,
    PollMark,
    StateStore,
    outbox_id,
)
from monitor.domain.errors import StaleWriteError
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from tests.adapters.state.support import T0, StoreOpener, fleet_states, large_scenario_document, run, state

KV = "https://kv-payments.vault.azure.net"
KV2 = "https://kv-orders.vault.azure.net"
MINUTE = timedelta(minutes=1)


# -- namespace states


def test_namespace_states_round_trip(open_store: StoreOpener):
    """Every state of a real fleet comes back equal: document, evaluation time and key ids."""
    states = fleet_states()

    async def check(store: StateStore) -> None:
        assert await store.put_namespace_states(states) == []
        for stored in states:
            assert await store.get_namespace_state(stored.id) == stored
        assert await store.list_namespace_states() == sorted(states, key=lambda s: s.key)

    run(open_store, check)


def test_namespace_ids_compare_case_insensitively(open_store: StoreOpener):
    """An ARM id in any case finds the same state, and a write in another case replaces it, keeping the new spelling."""
    first = state("sb-one", (KV, "k1"))
    upper_id = first.id.upper()
    second = NamespaceState(
        document={**first.document, "id": upper_id}, evaluated_at=T0 + MINUTE, key_ids=first.key_ids
    )

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([first])
        assert await store.get_namespace_state(first.id.lower()) == first
        await store.put_namespace_states([second])
        assert [s.id for s in await store.list_namespace_states()] == [upper_id]
        assert await store.namespaces_for_key(KV, "k1") == [upper_id]

    run(open_store, check)


def test_missing_namespace_state_is_none(open_store: StoreOpener):
    """Asking for a namespace never stored answers None, and listing an empty store answers []."""

    async def check(store: StateStore) -> None:
        assert await store.get_namespace_state("/subscriptions/x/namespaces/none") is None
        assert await store.list_namespace_states() == []

    run(open_store, check)


def test_an_older_state_does_not_replace_a_newer_one(open_store: StoreOpener):
    """A state evaluated before the stored one is left out and reported; an equal or later one replaces it."""
    newer = state("sb-one", (KV, "k1"), evaluated_at=T0 + MINUTE, status_now="revoked")
    older = state("sb-one", (KV, "k2"), evaluated_at=T0)
    same_time = state("sb-one", (KV, "k3"), evaluated_at=T0 + MINUTE, status_now="degraded")

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([newer])
        assert await store.put_namespace_states([older]) == [older.id]
        assert await store.get_namespace_state(newer.id) == newer
        assert await store.namespaces_for_key(KV, "k2") == []
        assert await store.put_namespace_states([same_time]) == []
        assert await store.get_namespace_state(newer.id) == same_time

    run(open_store, check)


def test_the_latest_state_of_a_namespace_in_one_batch_wins(open_store: StoreOpener):
    """A batch that holds one namespace twice stores the later evaluation."""
    early = state("sb-one", (KV, "k1"), evaluated_at=T0)
    late = state("sb-one", (KV, "k2"), evaluated_at=T0 + MINUTE)

    async def check(store: StateStore) -> None:
        assert await store.put_namespace_states([late, early]) == []
        assert await store.get_namespace_state(early.id) == late

    run(open_store, check)


def test_deleting_a_namespace_state_forgets_it_and_its_index_entries(open_store: StoreOpener):
    """A deleted namespace is gone from get, list and both indexes; deleting it again answers False."""
    gone = state("sb-gone", (KV, "shared"))
    kept = state("sb-kept", (KV, "shared"))

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([gone, kept])
        assert await store.delete_namespace_state(gone.id.upper()) is True
        assert await store.get_namespace_state(gone.id) is None
        assert [s.id for s in await store.list_namespace_states()] == [kept.id]
        assert await store.namespaces_for_key(KV, "shared") == [kept.id]
        assert await store.namespaces_for_vault(KV) == [kept.id]
        assert await store.delete_namespace_state(gone.id) is False

    run(open_store, check)


def test_summaries_say_what_is_stored_without_the_documents(open_store: StoreOpener):
    """Each stored state's summary carries its id, time, digest, verdict and keys, sorted by namespace."""
    states = fleet_states()

    async def check(store: StateStore) -> None:
        assert await store.list_namespace_summaries() == []
        await store.put_namespace_states(states)
        summaries = await store.list_namespace_summaries()
        assert summaries == [s.summary() for s in sorted(states, key=lambda s: s.key)]
        assert len({s.digest for s in summaries}) == len(summaries)

    run(open_store, check)


def test_digest_and_verdict_move_with_what_the_state_says():
    """The digest ignores when a state was judged but not what it says; the verdict moves only with the status,
    the revocation window or the worst finding."""
    base = state("sb-one", (KV, "k1"))
    later = replace(base, evaluated_at=T0 + MINUTE)
    other_keys = state("sb-one", (KV, "k2"))
    revoked = state("sb-one", (KV, "k1"), status_now="revoked")
    assert base.digest == later.digest and base.verdict == later.verdict
    assert base.digest != other_keys.digest and base.verdict == other_keys.verdict
    assert base.digest != revoked.digest and base.verdict != revoked.verdict


def test_writes_from_summaries_insert_replace_and_index(open_store: StoreOpener):
    """States written with the summaries read before them (new ones absent from them) are stored and indexed as
    any write is, and their summaries come back."""
    first = [state(f"sb-{n}", (KV, f"k{n % 3}")) for n in range(250)]
    second = [state(f"sb-{n}", (KV, f"k{n % 3}"), evaluated_at=T0 + MINUTE, status_now="revoked") for n in range(250)]

    async def check(store: StateStore) -> None:
        assert await store.put_namespace_states(first, previous={}) == []
        previous = {s.key: s for s in await store.list_namespace_summaries()}
        assert await store.put_namespace_states(second, previous=previous) == []
        assert await store.list_namespace_states() == sorted(second, key=lambda s: s.key)
        k1 = state("any", (KV, "k1")).key_ids
        expected = sorted((s.id for s in second if s.key_ids == k1), key=str.lower)
        assert await store.namespaces_for_key(KV, "k1") == expected
        assert len(await store.namespaces_for_vault(KV)) == 250

    run(open_store, check)


def test_writes_from_old_summaries_respect_what_was_written_since(open_store: StoreOpener):
    """A poll that read the summaries, then lost a race to an event's newer write (or to a namespace that
    appeared meanwhile), neither overwrites the newer judgement nor fails: it reports those left alone."""
    stored = state("sb-a", (KV, "k1"))
    appeared = state("sb-new", (KV, "k1"), evaluated_at=T0 + 2 * MINUTE, status_now="revoked")
    event = state("sb-a", (KV, "k1"), evaluated_at=T0 + 2 * MINUTE, status_now="revoked")
    poll = [state("sb-a", (KV, "k1"), evaluated_at=T0 + MINUTE), state("sb-new", (KV, "k1"), evaluated_at=T0 + MINUTE)]

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([stored])
        previous = {s.key: s for s in await store.list_namespace_summaries()}
        await store.put_namespace_states([event, appeared])
        assert sorted(await store.put_namespace_states(poll, previous=previous)) == sorted(s.id for s in poll)
        assert await store.get_namespace_state(stored.id) == event
        assert await store.get_namespace_state(appeared.id) == appeared

    run(open_store, check)


# -- the key and vault index


def test_the_index_finds_the_namespaces_that_list_a_key_or_vault(open_store: StoreOpener):
    """namespaces_for_key and namespaces_for_vault answer exactly the namespaces whose state lists them."""
    a = state("sb-a", (KV, "shared"), (KV2, "orders"))
    b = state("sb-b", (KV, "shared"))
    c = state("sb-c", (KV, "own"))

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([a, b, c])
        assert await store.namespaces_for_key(KV, "shared") == [a.id, b.id]
        assert await store.namespaces_for_key(KV, "own") == [c.id]
        assert await store.namespaces_for_key(KV2, "orders") == [a.id]
        assert await store.namespaces_for_key(KV2, "shared") == []
        assert await store.namespaces_for_vault(KV) == [a.id, b.id, c.id]
        assert await store.namespaces_for_vault(KV2) == [a.id]
        assert await store.namespaces_for_vault("https://kv-none.vault.azure.net") == []

    run(open_store, check)


def test_summaries_for_a_key_or_vault_are_those_of_the_namespaces_the_index_names(open_store: StoreOpener):
    """summaries_for_key and summaries_for_vault answer the summaries of exactly the namespaces namespaces_for_key
    and namespaces_for_vault name, and writes made from them land like any other (many, across partitions)."""
    states = [state(f"sb-{n:03d}", (KV, "shared"), (KV2, f"own-{n}"), subscription=f"sub-{n % 3}") for n in range(40)]
    states.append(state("sb-other", (KV2, "other")))

    async def check(store: StateStore) -> None:
        await store.put_namespace_states(states)
        by_key = await store.summaries_for_key(KV, "SHARED")
        by_vault = await store.summaries_for_vault(KV2)
        assert [s.id for s in by_key] == await store.namespaces_for_key(KV, "shared")
        assert [s.id for s in by_vault] == await store.namespaces_for_vault(KV2)
        assert len(by_key) == 40 and len(by_vault) == 41
        expected = {s.key: s.summary() for s in states}
        assert all(summary == expected[summary.key] for summary in by_vault)
        revoked = [
            replace(s, evaluated_at=T0 + MINUTE, document={**s.document, "status_now": "revoked"}) for s in states
        ]
        assert await store.put_namespace_states(revoked[:40], previous={s.key: s for s in by_key}) == []
        assert [s.status_now for s in await store.list_namespace_states()].count("revoked") == 40

    run(open_store, check)


def test_index_lookups_ignore_case_and_trailing_slashes(open_store: StoreOpener):
    """A vault URI or key name spelt in another case, or with a trailing slash, finds the same namespaces."""
    a = state("sb-a", ("https://KV-Payments.vault.azure.net/", "Shared-Key"))

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([a])
        assert await store.namespaces_for_key("https://kv-payments.VAULT.azure.net", "shared-key") == [a.id]
        assert await store.namespaces_for_vault("HTTPS://KV-PAYMENTS.VAULT.AZURE.NET/") == [a.id]

    run(open_store, check)


def test_the_index_follows_a_namespace_whose_keys_change(open_store: StoreOpener):
    """When a namespace stops listing a key and starts listing another, the index moves it."""
    before = state("sb-a", (KV, "old"), (KV, "kept"))
    after = state("sb-a", (KV2, "new"), (KV, "kept"), evaluated_at=T0 + MINUTE)

    async def check(store: StateStore) -> None:
        await store.put_namespace_states([before])
        await store.put_namespace_states([after])
        assert await store.namespaces_for_key(KV, "old") == []
        assert await store.namespaces_for_key(KV, "kept") == [after.id]
        assert await store.namespaces_for_key(KV2, "new") == [after.id]
        assert await store.namespaces_for_vault(KV2) == [after.id]
        assert (await store.get_namespace_state(after.id)) == after

    run(open_store, check)


def test_namespaces_indexed_ahead_are_found_only_once_their_states_are_stored(open_store: StoreOpener):
    """A poll indexes the namespaces it has no state of while it reads their keys: nothing is answered for them
    until their states are stored, then exactly what the states list (a state whose keys changed meanwhile
    is indexed by its own keys)."""
    a = state("sb-a", (KV, "shared"), (KV2, "orders"))
    b = state("sb-b", (KV, "shared"))
    moved = state("sb-moved", (KV2, "new"))

    async def check(store: StateStore) -> None:
        await store.index_new_namespaces(
            [(a.id, a.key_ids), (b.id, b.key_ids), (moved.id, frozenset({(KV.lower(), "old")}))]
        )
        assert await store.namespaces_for_key(KV, "shared") == []
        assert await store.summaries_for_vault(KV) == []
        assert await store.put_namespace_states([a, b, moved], previous={}) == []
        assert await store.namespaces_for_key(KV, "shared") == [a.id, b.id]
        assert await store.namespaces_for_key(KV2, "orders") == [a.id]
        assert await store.namespaces_for_key(KV2, "new") == [moved.id]
        assert await store.namespaces_for_key(KV, "old") == []
        assert await store.namespaces_for_vault(KV) == [a.id, b.id]

    run(open_store, check)


def test_the_index_stays_exact_under_concurrent_writers(open_store: StoreOpener):
    """Two instances rewriting the same namespaces with different keys at once leave the index matching the states."""
    rounds = [
        [state(f"sb-{n}", (KV, f"k{(n + r) % 3}"), evaluated_at=T0 + r * MINUTE) for n in range(4)] for r in range(6)
    ]

    async def check(store: StateStore) -> None:
        async with open_store() as other:
            await asyncio.gather(
                *((store if r % 2 else other).put_namespace_states(batch) for r, batch in enumerate(rounds))
            )
        stored = await store.list_namespace_states()
        assert stored == sorted(rounds[-1], key=lambda s: s.key)  # the latest evaluation of each wins
        for name in ("k0", "k1", "k2"):
            expected = sorted((s.id for s in stored if (KV.lower(), name) in s.key_ids), key=str.lower)
            assert await store.namespaces_for_key(KV, name) == expected

    run(open_store, check)


# -- key records


def test_key_records_round_trip_and_a_vault_s_records_replace_its_earlier_ones(open_store: StoreOpener):
    """Each vault's records come back as stored; storing a vault again replaces only that vault's."""
    first = {"kv-a": {"format": 1, "keys": {"k1": [1, 2]}}, "kv-b": {"format": 1, "keys": {}}}
    later = {"kv-a": {"format": 1, "keys": {"k2": ["x"]}}}

    async def check(store: StateStore) -> None:
        assert await store.list_key_records() == {}
        await store.put_key_records(first, written_at=T0)
        assert await store.list_key_records() == first
        await store.put_key_records(later, written_at=T0 + MINUTE)
        assert await store.list_key_records() == {**first, **later}

    run(open_store, check)


def test_key_records_of_a_large_vault_fit(open_store: StoreOpener):
    """A vault of 20,000 keys (records that do not compress much) is stored and read back whole."""
    rng = random.Random(3)
    keys = {f"key-{n:05d}": [f"{rng.getrandbits(128):032x}", rng.random()] for n in range(20_000)}
    records = {"kv-large": {"format": 1, "keys": keys}}

    async def check(store: StateStore) -> None:
        await store.put_key_records(records, written_at=T0)
        assert await store.list_key_records() == records

    run(open_store, check)


# -- snapshot


def test_snapshot_round_trip(open_store: StoreOpener):
    """A stored snapshot comes back with its document and time; none stored answers None."""
    document = {"now": "2026-11-22T00:00:00Z", "vaults": [], "keys": [], "namespaces": []}

    async def check(store: StateStore) -> None:
        assert await store.get_snapshot() is None
        assert await store.put_snapshot(document, taken_at=T0) is True
        stored = await store.get_snapshot()
        assert stored is not None
        assert (stored.document, stored.taken_at) == (document, T0)

    run(open_store, check)


def test_a_snapshot_rendered_as_it_is_written_is_stored_as_the_whole_document(open_store: StoreOpener):
    """The poll hands the store scenario_document(lazy=True): namespaces and keys made documents a slice at a
    time. What is stored is the document the eager form is, and parses back to the scenario."""
    scenario, _ = parse_scenario(build_fleet(2_500))

    async def check(store: StateStore) -> None:
        assert await store.put_snapshot(scenario_document(scenario, lazy=True), taken_at=T0)
        stored = await store.get_snapshot()
        assert stored is not None
        assert stored.document == scenario_document(scenario)
        assert parse_scenario(stored.document)[0] == scenario

    run(open_store, check)


def test_an_older_snapshot_does_not_replace_a_newer_one(open_store: StoreOpener):
    """put_snapshot with an earlier time stores nothing and answers False; a later one replaces the stored one."""

    async def check(store: StateStore) -> None:
        await store.put_snapshot({"n": 2}, taken_at=T0 + MINUTE)
        assert await store.put_snapshot({"n": 1}, taken_at=T0) is False
        stored = await store.get_snapshot()
        assert stored is not None and stored.document == {"n": 2}
        assert await store.put_snapshot({"n": 3}, taken_at=T0 + 2 * MINUTE) is True
        stored = await store.get_snapshot()
        assert stored is not None and stored.document == {"n": 3}

    run(open_store, check)


def test_a_multi_megabyte_snapshot_round_trips(open_store: StoreOpener):
    """A 10,000-namespace fleet's scenario document (several MB) is stored, read back and replaced whole."""
    document = large_scenario_document()
    smaller = large_scenario_document(namespaces=2_000, seed=8)

    async def check(store: StateStore) -> None:
        assert await store.put_snapshot(document, taken_at=T0)
        stored = await store.get_snapshot()
        assert stored is not None and stored.document == document
        assert await store.put_snapshot(smaller, taken_at=T0 + MINUTE)
        stored = await store.get_snapshot()
        assert stored is not None and stored.document == smaller

    run(open_store, check)


# -- event deduplication


def test_an_event_is_new_only_the_first_time(open_store: StoreOpener):
    """mark_event_processed answers True for a new id and False for every repeat."""

    async def check(store: StateStore) -> None:
        assert await store.mark_event_processed("e-1", at=T0) is True
        assert await store.mark_event_processed("e-1", at=T0 + MINUTE) is False
        assert await store.mark_event_processed("E-1", at=T0) is True  # event ids are compared exactly

    run(open_store, check)


def test_concurrent_marks_of_one_event_let_exactly_one_caller_win(open_store: StoreOpener):
    """Of many concurrent mark_event_processed calls for one id, from two store instances, exactly one gets True."""

    async def check(store: StateStore) -> None:
        async with open_store() as other:
            results = await asyncio.gather(
                *((store if n % 2 else other).mark_event_processed("dup", at=T0) for n in range(40))
            )
        assert sorted(results) == [False] * 39 + [True]

    run(open_store, check)


def test_purging_forgets_only_events_processed_before_the_cutoff(open_store: StoreOpener):
    """Purging removes older ids (which are then new again), keeps later ones, and counts what it removed."""

    async def check(store: StateStore) -> None:
        for n in range(5):
            await store.mark_event_processed(f"e-{n}", at=T0 + n * MINUTE)
        assert await store.purge_processed_events(before=T0 + 3 * MINUTE) == 3
        assert await store.mark_event_processed("e-0", at=T0 + 10 * MINUTE) is True
        assert await store.mark_event_processed("e-3", at=T0 + 10 * MINUTE) is False
        assert await store.purge_processed_events(before=T0) == 0

    run(open_store, check)


# -- incidents


def _incident(**fields: object) -> Incident:
    values: dict[str, object] = {
        "namespace_id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/sb-a",
        "condition": "revocation-predicted",
        "body": {"severity": "critical", "opened_at": "2026-11-22T00:00:00Z"},
    }
    values.update(fields)
    return Incident(**values)  # type: ignore[arg-type]


def test_incident_create_read_and_update_with_etags(open_store: StoreOpener):
    """An incident is created without an ETag, read back with one, and replaced only with the ETag last read."""

    async def check(store: StateStore) -> None:
        created = await store.put_incident(_incident())
        assert created.etag
        read = await store.get_incident(created.namespace_id.upper(), created.condition)
        assert read == created
        updated = await store.put_incident(_incident(body={"severity": "warning"}), expected_etag=created.etag)
        assert updated.etag and updated.etag != created.etag
        assert await store.get_incident(created.namespace_id, created.condition) == updated

    run(open_store, check)


def test_incident_writes_with_a_stale_or_missing_etag_are_refused(open_store: StoreOpener):
    """Creating an existing incident, or updating one with an old ETag or a missing one, raises StaleWriteError."""

    async def check(store: StateStore) -> None:
        created = await store.put_incident(_incident())
        with pytest.raises(StaleWriteError) as exists:
            await store.put_incident(_incident())
        assert exists.value.expected_etag is None
        await store.put_incident(_incident(body={"n": 2}), expected_etag=created.etag)
        with pytest.raises(StaleWriteError) as stale:
            await store.put_incident(_incident(body={"n": 3}), expected_etag=created.etag)
        assert stale.value.expected_etag == created.etag
        with pytest.raises(StaleWriteError):
            await store.put_incident(_incident(condition="other"), expected_etag=created.etag)
        current = await store.get_incident(created.namespace_id, created.condition)
        assert current is not None and current.body == {"n": 2}
        assert await store.get_incident(created.namespace_id, "other") is None

    run(open_store, check)


def test_of_concurrent_updates_from_one_etag_exactly_one_wins(open_store: StoreOpener):
    """Many instances updating an incident from the same ETag at once: one succeeds, the rest get StaleWriteError."""

    async def check(store: StateStore) -> None:
        created = await store.put_incident(_incident())
        async with open_store() as other:
            outcomes = await asyncio.gather(
                *(
                    (store if n % 2 else other).put_incident(_incident(body={"writer": n}), expected_etag=created.etag)
                    for n in range(10)
                ),
                return_exceptions=True,
            )
        winners = [o for o in outcomes if isinstance(o, Incident)]
        assert len(winners) == 1
        assert all(isinstance(o, StaleWriteError) for o in outcomes if not isinstance(o, Incident))
        assert await store.get_incident(created.namespace_id, created.condition) == winners[0]

    run(open_store, check)


def test_listing_incidents_can_keep_only_open_ones(open_store: StoreOpener):
    """list_incidents returns every incident sorted by namespace and condition, or only the open ones."""
    a_open = _incident(namespace_id="/subscriptions/s/namespaces/sb-a", condition="key-expiring")
    a_closed = _incident(namespace_id="/subscriptions/s/namespaces/sb-a", condition="access-denied", open=False)
    b_open = _incident(namespace_id="/subscriptions/s/namespaces/SB-B", condition="revocation-predicted")

    async def check(store: StateStore) -> None:
        for incident in (b_open, a_open, a_closed):
            await store.put_incident(incident)
        everything = await store.list_incidents()
        assert [(i.namespace_id, i.condition, i.open) for i in everything] == [
            (a_closed.namespace_id, "access-denied", False),
            (a_open.namespace_id, "key-expiring", True),
            (b_open.namespace_id, "revocation-predicted", True),
        ]
        assert [i.condition for i in await store.list_incidents(open_only=True)] == [
            "key-expiring",
            "revocation-predicted",
        ]

    run(open_store, check)


# -- the alert outbox


def _entry(incident: Incident, notice: int, sink: str, *, at_minute: int = 0, **fields: object) -> OutboxEntry:
    created = T0 + at_minute * MINUTE
    values: dict[str, object] = {
        "id": outbox_id(created, incident.namespace_id, incident.condition, notice, sink),
        "namespace_id": incident.namespace_id,
        "condition": incident.condition,
        "sink": sink,
        "document": {"kind": "open", "notice": notice, "summary": "sb-a will go Revoked in 6 days"},
        "created_at": created,
    }
    values.update(fields)
    return OutboxEntry(**values)  # type: ignore[arg-type]


def test_outbox_entries_are_written_with_their_incident_and_listed_in_order(open_store: StoreOpener):
    """Entries queued with incident writes come back whole, sorted by the order they were made in."""
    first = _incident()
    other = _incident(namespace_id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/sb-b")

    async def check(store: StateStore) -> None:
        opened = await store.put_incident(first, outbox=[_entry(first, 1, "pager"), _entry(first, 1, "teams")])
        await store.put_incident(other, outbox=[_entry(other, 1, "pager", at_minute=1)])
        await store.put_incident(
            _incident(body={"level": "critical"}),
            expected_etag=opened.etag,
            outbox=[_entry(first, 2, "pager", at_minute=2)],
        )
        listed = await store.list_outbox()
        assert [(e.namespace_id.rsplit("/", 1)[-1], e.document["notice"], e.sink) for e in listed] == [
            ("sb-a", 1, "pager"),
            ("sb-a", 1, "teams"),
            ("sb-b", 1, "pager"),
            ("sb-a", 2, "pager"),
        ]
        assert listed[0] == _entry(first, 1, "pager")
        # The outbox never shows up as incidents.
        assert [i.namespace_id.rsplit("/", 1)[-1] for i in await store.list_incidents()] == ["sb-a", "sb-b"]

    run(open_store, check)


def test_a_refused_incident_write_queues_nothing(open_store: StoreOpener):
    """When the incident write is stale, its outbox entries are not written either: all or nothing."""
    incident = _incident()

    async def check(store: StateStore) -> None:
        created = await store.put_incident(incident)
        await store.put_incident(_incident(body={"n": 2}), expected_etag=created.etag)
        with pytest.raises(StaleWriteError):
            await store.put_incident(
                _incident(body={"n": 3}), expected_etag=created.etag, outbox=[_entry(incident, 2, "pager")]
            )
        with pytest.raises(StaleWriteError):
            await store.put_incident(_incident(), outbox=[_entry(incident, 3, "pager")])
        assert await store.list_outbox() == []

    run(open_store, check)


def test_outbox_entries_of_another_incident_are_refused(open_store: StoreOpener):
    """put_incident refuses (ValueError) an entry of another namespace or condition, writing nothing."""
    incident = _incident()
    stranger = _incident(condition="blind")

    async def check(store: StateStore) -> None:
        with pytest.raises(ValueError, match="another incident"):
            await store.put_incident(incident, outbox=[_entry(stranger, 1, "pager")])
        assert await store.get_incident(incident.namespace_id, incident.condition) is None
        assert await store.list_outbox() == []

    run(open_store, check)


def test_outbox_attempts_are_recorded_and_delivered_entries_removed(open_store: StoreOpener):
    """A failed attempt updates attempts, next attempt and error; a delete removes the entry once."""
    incident = _incident()
    entry = _entry(incident, 1, "pager")

    async def check(store: StateStore) -> None:
        await store.put_incident(incident, outbox=[entry])
        retried = OutboxEntry(
            id=entry.id,
            namespace_id=entry.namespace_id,
            condition=entry.condition,
            sink=entry.sink,
            document=entry.document,
            created_at=entry.created_at,
            attempts=1,
            next_attempt_at=T0 + 2 * MINUTE,
            last_error="HTTP 500",
        )
        assert await store.update_outbox_entry(retried)
        assert await store.list_outbox() == [retried]
        assert await store.delete_outbox_entry(retried)
        assert not await store.delete_outbox_entry(retried)
        assert not await store.update_outbox_entry(retried)  # a delivered entry never comes back
        assert await store.list_outbox() == []

    run(open_store, check)


def test_an_outbox_entry_is_claimed_only_as_it_was_read(open_store: StoreOpener):
    """Of two deliverers (two store objects) that read the same entry, one claims it; the other's claim, and
    its delete or retry record from the old read, change nothing."""
    incident = _incident()
    entry = _entry(incident, 1, "pager")

    async def check(store: StateStore) -> None:
        await store.put_incident(incident, outbox=[entry])
        async with open_store() as other:
            (mine,) = await store.list_outbox()
            (theirs,) = await other.list_outbox()
            assert mine.etag and mine == entry and mine.claimed_by is None
            claimed = await store.claim_outbox_entry(mine, holder="A", until=T0 + MINUTE)
            assert claimed is not None and claimed.etag != mine.etag
            assert await other.claim_outbox_entry(theirs, holder="B", until=T0 + MINUTE) is None
            assert not await other.delete_outbox_entry(theirs)
            assert not await other.update_outbox_entry(replace(theirs, attempts=1, last_error="HTTP 500"))
            (listed,) = await other.list_outbox()
            assert listed.claimed_by == "A" and listed.claimed_until == T0 + MINUTE
            assert listed.claimed_at(T0) and not listed.claimed_at(T0 + MINUTE)
            assert await store.delete_outbox_entry(claimed)
            assert await other.claim_outbox_entry(listed, holder="B", until=T0 + MINUTE) is None  # gone
            assert await other.list_outbox() == []

    run(open_store, check)


def test_a_failed_attempt_recorded_under_a_claim_drops_the_claim(open_store: StoreOpener):
    """A retry record written at the claim's etag keeps attempts and error, ends the claim, and gives a new etag."""
    incident = _incident()
    entry = _entry(incident, 1, "pager")

    async def check(store: StateStore) -> None:
        await store.put_incident(incident, outbox=[entry])
        (read,) = await store.list_outbox()
        claimed = await store.claim_outbox_entry(read, holder="A", until=T0 + MINUTE)
        assert claimed is not None
        retried = replace(claimed, attempts=1, next_attempt_at=T0 + 2 * MINUTE, last_error="HTTP 503")
        assert await store.update_outbox_entry(retried)
        assert not await store.update_outbox_entry(retried)  # its etag is the claim's, now replaced
        (after,) = await store.list_outbox()
        assert after == replace(entry, attempts=1, next_attempt_at=T0 + 2 * MINUTE, last_error="HTTP 503")
        assert after.claimed_by is None and after.claimed_until is None
        with pytest.raises(ValueError, match="no etag"):
            await store.claim_outbox_entry(entry, holder="A", until=T0)

    run(open_store, check)


# -- leases


def test_a_lease_has_one_holder_until_it_expires(open_store: StoreOpener):
    """While A holds the lease B cannot take it; once it has expired B can, and A can neither renew nor release it."""
    ttl = timedelta(seconds=60)

    async def check(store: StateStore) -> None:
        first = await store.acquire_lease("poll", "A", ttl, now=T0)
        assert first is not None and first.holder == "A" and first.expires_at == T0 + ttl
        assert await store.acquire_lease("poll", "B", ttl, now=T0 + timedelta(seconds=59)) is None
        extended = await store.acquire_lease("poll", "A", ttl, now=T0 + timedelta(seconds=30))  # A extends
        assert extended is not None and extended.token == first.token
        assert await store.acquire_lease("poll", "B", ttl, now=T0 + timedelta(seconds=89)) is None
        taken = await store.acquire_lease("poll", "B", ttl, now=T0 + timedelta(seconds=90))  # expired
        assert taken is not None and taken.token > first.token
        assert await store.renew_lease("poll", "A", ttl, now=T0 + timedelta(seconds=91), token=first.token) is None
        assert await store.release_lease("poll", "A") is False
        assert await store.get_lease("poll") == Lease("poll", "B", T0 + timedelta(seconds=150), taken.token)

    run(open_store, check)


def test_a_lease_is_renewed_only_before_it_expires(open_store: StoreOpener):
    """The holder extends its lease by renewing in time; once expired, renewing fails and it must acquire again."""
    ttl = timedelta(seconds=60)

    async def check(store: StateStore) -> None:
        lease = await store.acquire_lease("poll", "A", ttl, now=T0)
        assert lease is not None
        renewed = await store.renew_lease("poll", "A", ttl, now=T0 + timedelta(seconds=50), token=lease.token)
        assert renewed == Lease("poll", "A", T0 + timedelta(seconds=110), lease.token)
        assert await store.get_lease("poll") == renewed
        assert await store.renew_lease("poll", "A", ttl, now=T0 + timedelta(seconds=110), token=lease.token) is None
        assert await store.renew_lease("poll", "B", ttl, now=T0, token=lease.token) is None
        assert await store.renew_lease("other", "A", ttl, now=T0, token=lease.token) is None

    run(open_store, check)


def test_fencing_tokens_grow_each_time_the_lease_passes_to_a_holder(open_store: StoreOpener):
    """Released, expired or taken over, the next holder's token is larger (even the same holder's, and even
    from another store object); an old token renews nothing, though the holder name matches."""
    ttl = timedelta(seconds=60)

    async def check(store: StateStore) -> None:
        tokens = []
        first = await store.acquire_lease("poll", "A", ttl, now=T0)
        assert first is not None
        tokens.append(first.token)
        assert await store.release_lease("poll", "A", token=first.token)
        again = await store.acquire_lease("poll", "A", ttl, now=T0)  # after a release: a new token
        assert again is not None
        tokens.append(again.token)
        async with open_store() as other:
            later = await other.acquire_lease("poll", "A", ttl, now=T0 + 2 * ttl)  # after expiry: a new token
            assert later is not None
            tokens.append(later.token)
            assert await other.renew_lease("poll", "A", ttl, now=T0 + 2 * ttl, token=again.token) is None
            assert await other.release_lease("poll", "A", token=again.token) is False  # nor releases it
        assert tokens == sorted(set(tokens))
        assert (await store.get_lease("poll")) == later

    run(open_store, check)


def test_a_released_lease_is_free_for_anyone(open_store: StoreOpener):
    """After its holder releases it the lease has no record and another holder takes it at once."""
    ttl = timedelta(minutes=5)

    async def check(store: StateStore) -> None:
        assert await store.acquire_lease("poll", "A", ttl, now=T0)
        assert await store.release_lease("poll", "A") is True
        assert await store.release_lease("poll", "A") is False
        assert await store.get_lease("poll") is None
        assert await store.acquire_lease("poll", "B", ttl, now=T0 + MINUTE) is not None
        assert await store.acquire_lease("other", "A", ttl, now=T0 + MINUTE) is not None  # leases are independent

    run(open_store, check)


def test_concurrent_acquirers_get_the_lease_once(open_store: StoreOpener):
    """Of many holders on two store instances trying to take a free or an expired lease at once, exactly one gets it."""
    ttl = timedelta(minutes=5)

    async def race(store: StateStore, other: StateStore, now_offset: timedelta) -> list[Lease]:
        now = T0 + now_offset
        leases = await asyncio.gather(
            *((store if n % 2 else other).acquire_lease("poll", f"h{n}", ttl, now=now) for n in range(12))
        )
        return [lease for lease in leases if lease is not None]

    async def check(store: StateStore) -> None:
        async with open_store() as other:
            (first,) = await race(store, other, timedelta(0))
            (second,) = await race(store, other, ttl)  # the first lease has just expired
            assert second.token > first.token
            assert await store.get_lease("poll") == second

    run(open_store, check)


# -- the last complete poll


def test_the_last_complete_poll_is_one_mark_that_never_goes_back(open_store: StoreOpener):
    """No mark until a poll completes; then the latest poll's holder and time, an earlier one leaving it alone."""

    async def check(store: StateStore) -> None:
        assert await store.last_poll_completed() is None
        await store.record_poll_completed("A", at=T0)
        assert await store.last_poll_completed() == PollMark("A", T0)
        await store.record_poll_completed("B", at=T0 + 5 * MINUTE)
        await store.record_poll_completed("A", at=T0 + MINUTE)  # a slow poll finishing late
        async with open_store() as other:  # any instance reads the same mark
            assert await other.last_poll_completed() == PollMark("B", T0 + 5 * MINUTE)

    run(open_store, check)


def test_concurrent_poll_marks_keep_the_latest(open_store: StoreOpener):
    """Instances recording marks at once on two store objects: the latest time wins, whatever the order."""

    async def check(store: StateStore) -> None:
        async with open_store() as other:
            await asyncio.gather(
                *(
                    (store if n % 2 else other).record_poll_completed(f"h{n}", at=T0 + n * MINUTE)
                    for n in (3, 7, 1, 5, 2, 6, 4)
                )
            )
        assert await store.last_poll_completed() == PollMark("h7", T0 + 7 * MINUTE)

    run(open_store, check)


# -- shared budgets

SECOND = timedelta(seconds=1)


def test_a_budget_window_grants_up_to_its_limit(open_store: StoreOpener):
    """Takes are granted in full while they fit, in part at the edge, then not at all; other windows and
    scopes have budgets of their own; a negative count is refused."""

    async def check(store: StateStore) -> None:
        assert await store.take_budget("kv-a", T0, 40, 100) == 40
        assert await store.take_budget("kv-a", T0, 40, 100) == 40
        assert await store.take_budget("kv-a", T0, 40, 100) == 20
        assert await store.take_budget("kv-a", T0, 40, 100) == 0
        assert await store.take_budget("kv-a", T0 + 10 * SECOND, 40, 100) == 40
        assert await store.take_budget("kv-b", T0, 40, 100) == 40
        assert await store.take_budget("kv-a", T0, 0, 100) == 0
        with pytest.raises(ValueError, match="wanted"):
            await store.take_budget("kv-a", T0, -1, 100)

    run(open_store, check)


def test_concurrent_takers_never_get_more_than_the_limit_together(open_store: StoreOpener):
    """Many takers on two store objects (two instances) at once: together granted exactly the limit, no more."""

    async def check(store: StateStore) -> None:
        async with open_store() as other:
            grants = await asyncio.gather(
                *((store if n % 2 else other).take_budget("kv-a", T0, 7, 50) for n in range(12))
            )
        assert sum(grants) == 50
        assert await store.take_budget("kv-a", T0, 7, 50) == 0

    run(open_store, check)


def test_old_budget_windows_are_forgotten_when_a_new_one_opens(open_store: StoreOpener):
    """A window more than BUDGET_KEPT older than a newly opened one is gone: asked again, it starts afresh;
    a recent one is kept."""

    async def check(store: StateStore) -> None:
        recent = T0 + BUDGET_KEPT - MINUTE
        assert await store.take_budget("kv-a", T0, 10, 10) == 10
        assert await store.take_budget("kv-a", recent, 10, 10) == 10
        assert await store.take_budget("kv-a", T0 + BUDGET_KEPT + MINUTE, 10, 10) == 10  # opens a new window
        assert await store.take_budget("kv-a", recent, 10, 10) == 0  # kept: still spent
        assert await store.take_budget("kv-a", T0, 10, 10) == 10  # forgotten: afresh

    run(open_store, check)
