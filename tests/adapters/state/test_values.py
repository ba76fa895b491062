"""The state store's value types: normalisation of ids and times, and what they refuse."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from monitor.app.state import Incident, Lease, NamespaceState, StoredSnapshot, namespace_key, utc
from monitor.domain.model import KeyRef, Namespace
from tests.adapters.state.support import T0

NS_ID = "/subscriptions/S/resourceGroups/RG/providers/Microsoft.ServiceBus/namespaces/SB-A"


def test_namespace_keys_ignore_case_and_a_trailing_slash():
    """Two spellings of one ARM id have the same comparable key."""
    assert namespace_key(NS_ID) == namespace_key(NS_ID.lower() + "/")


def test_a_state_normalises_its_key_ids_and_time():
    """Key ids become (vault_id, name_id) and evaluated_at becomes UTC, so equal states compare equal."""
    plus_two = timezone(timedelta(hours=2))
    state = NamespaceState(
        document={"id": NS_ID},
        evaluated_at=T0.astimezone(plus_two),
        key_ids=frozenset({("https://KV.vault.azure.net/", "Key-A")}),
    )
    assert state.key_ids == frozenset({("https://kv.vault.azure.net", "key-a")})
    assert state.evaluated_at == T0 and state.evaluated_at.tzinfo is not None
    assert state.evaluated_at.utcoffset() == timedelta(0)
    assert state.key == namespace_key(NS_ID) and state.id == NS_ID


def test_a_state_of_a_namespace_is_indexed_by_the_keys_it_lists():
    """NamespaceState.of takes the key ids from the namespace's key references."""
    namespace = Namespace(
        id=NS_ID,
        name="SB-A",
        keys=(KeyRef("https://kv.vault.azure.net", "a"), KeyRef("https://kv2.vault.azure.net", "b", "v1")),
    )
    state = NamespaceState.of(namespace, {"id": NS_ID, "name": "SB-A", "status_now": "healthy"}, evaluated_at=T0)
    assert state.key_ids == {("https://kv.vault.azure.net", "a"), ("https://kv2.vault.azure.net", "b")}
    assert (state.name, state.status_now, state.findings) == ("SB-A", "healthy", [])


def test_a_state_needs_an_id_and_an_aware_time():
    """A document without an id, or a naive evaluated_at, raises ValueError."""
    with pytest.raises(ValueError, match="id"):
        NamespaceState(document={"name": "x"}, evaluated_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        NamespaceState(document={"id": NS_ID}, evaluated_at=datetime(2026, 11, 22))


def test_naive_times_are_refused_everywhere():
    """utc(), StoredSnapshot and Lease refuse a naive datetime rather than guess its zone."""
    naive = datetime(2026, 11, 22)
    for build in (
        lambda: utc(naive),
        lambda: StoredSnapshot(document={}, taken_at=naive),
        lambda: Lease(name="poll", holder="A", expires_at=naive),
    ):
        with pytest.raises(ValueError, match="timezone-aware"):
            build()


def test_a_lease_is_held_until_just_before_it_expires():
    """Lease.held_at is true before expires_at and false from it on."""
    lease = Lease(name="poll", holder="A", expires_at=T0)
    assert lease.held_at(T0 - timedelta(microseconds=1))
    assert not lease.held_at(T0)


def test_incidents_are_keyed_by_comparable_namespace_and_exact_condition():
    """An incident's key folds the namespace id's case but keeps the condition as given; empty parts are refused."""
    assert Incident(namespace_id=NS_ID, condition="Key-Expiring", body={}).key == (namespace_key(NS_ID), "Key-Expiring")
    with pytest.raises(ValueError):
        Incident(namespace_id=NS_ID, condition="", body={})
