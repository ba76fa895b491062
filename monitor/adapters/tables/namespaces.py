"""Namespace states on Table Storage, and the key index kept with them: each namespace's judgement, and which
namespaces list a key or use a vault (kept in an order that never loses a listed key's entry)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from monitor.adapters.tables import wire
from monitor.adapters.tables.codec import (
    _CONFLICTS,
    _PARTITION_SAFE,
    _RACE_RETRIES,
    _ROWS_PER_QUERY,
    NAMESPACES,
    _back_off,
    _create_or_replace,
    _digest,
    _etag,
    _failures,
    _in_transactions,
    _joined,
    _key_ids_from,
    _key_ids_json,
    _pack,
    _pieces,
    _time,
    _transact,
    _unpack,
)
from monitor.adapters.tables.key_users import Change, KeyUserTables
from monitor.app.state import (
    NamespaceState,
    StateSummary,
    namespace_key,
)
from monitor.domain.errors import StateStoreError
from monitor.domain.model import KeyId, name_id, vault_id

# A summary is one property (JSON): the SDK's cost of reading an entity grows with its properties.
_SUMMARY = ["NamespaceId", "Summary"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A summary's last field when the key index holds exactly the state's keys, nothing to clean. True said so of
# the per-entry index of earlier versions, no longer read: such a state reads as changed and unsettled, so the
# next poll writes it the careful way, which indexes it anew.
_SETTLED = 2


def _summary_json(state: NamespaceState, settled: bool) -> str:
    """[evaluated_at, digest, verdict, key ids, settled]: settled when IndexedKeyIds is the keys (nothing to clean)."""
    keys = sorted([vault, name] for vault, name in state.key_ids)
    return json.dumps([state.evaluated_at.isoformat(), state.digest, state.verdict, keys, _SETTLED if settled else 0])


def _settled(entity: Mapping[str, Any] | None) -> bool:
    """Whether a stored namespace entity says the key index holds exactly its keys."""
    try:
        return entity is not None and json.loads(entity.get("Summary") or "")[4] == _SETTLED
    except (ValueError, TypeError, IndexError, KeyError):
        return False


_OR_QUERIES_AT_MOST = 4  # per partition; past that, one query of the whole partition


def _summary_of(entity: Mapping[str, str], etag: str) -> StateSummary:
    """The summary of a namespace entity read as its NamespaceId and Summary (wire.query_strings)."""
    namespace_id = str(entity.get("NamespaceId") or "")
    try:
        evaluated_at, digest, verdict, keys, settled = json.loads(entity.get("Summary") or "")
        summary = StateSummary(
            namespace_id,
            datetime.fromisoformat(evaluated_at),
            # Indexed by an earlier version's per-entry index (settled True): changed, so the next poll writes it,
            # the careful way, which indexes it.
            "" if settled is True else str(digest),
            str(verdict),
            frozenset((str(vault), str(name)) for vault, name in keys),
            etag if settled == _SETTLED else None,  # else a write must settle the index first
        )
    except (ValueError, TypeError):
        # Stored before summaries were kept, or unreadable: changed, and written the careful way (read first).
        return StateSummary(namespace_id, _EPOCH, "", "", frozenset(), None)
    return summary


def _summaries_from(entities: Iterable[tuple[dict[str, str], str]]) -> list[StateSummary]:
    """The summaries of namespace entities as wire.query_strings reads them, by namespace key."""
    return sorted((_summary_of(*entity) for entity in entities if entity[0].get("NamespaceId")), key=lambda s: s.key)


_Write = tuple[NamespaceState, str | None, dict[str, Any]]  # a state, the ETag it replaces (None: new), its entity


class NamespaceTables(KeyUserTables):
    """Namespace states on Table Storage, and the key index kept with them (see this module's docstring)."""

    # -- namespace states and the key index

    @staticmethod
    def _namespace_partition(key: str) -> str:
        # By subscription: a fleet's namespaces spread over partitions, and a human can find them. Service Bus
        # allows 1,000 namespaces a subscription, so a partition never holds more than that many.
        parts = key.strip("/").split("/")
        if len(parts) > 1 and parts[0] == "subscriptions" and _PARTITION_SAFE.match(parts[1]):
            return parts[1]
        return "-"

    def _namespace_address(self, namespace_id: str) -> tuple[str, str]:
        key = namespace_key(namespace_id)
        return self._namespace_partition(key), _digest(key)

    def _state_entity(
        self, state: NamespaceState, indexed: frozenset[KeyId], *, settled: bool = True
    ) -> dict[str, Any]:
        """`settled` False: the index may lack the keys (an earlier version's state), whatever IndexedKeyIds says."""
        partition, row = self._namespace_address(state.id)
        return {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": state.id,
            "Name": state.name or "",
            "StatusNow": state.status_now or "",
            "EvaluatedAt": state.evaluated_at,
            "KeyIds": _key_ids_json(state.key_ids),
            "Summary": _summary_json(state, settled and indexed == state.key_ids),
            # Every key that may have an index entry for this namespace: what a later write must clean up.
            "IndexedKeyIds": _key_ids_json(indexed),
            **_pieces(_pack(state.document), "Doc", what=f"namespace {state.id}"),
        }

    @staticmethod
    def _state_from(entity: Mapping[str, Any]) -> NamespaceState:
        what = f"namespace {entity.get('NamespaceId')}"
        return NamespaceState(
            document=_unpack(_joined(entity, "Doc"), what),
            evaluated_at=_time(entity["EvaluatedAt"]),
            key_ids=_key_ids_from(entity, "KeyIds"),
        )

    @staticmethod
    def _changes(namespace_id: str, key_ids: Iterable[KeyId], *, listed: bool) -> list[Change]:
        return [(key_id, namespace_id, listed) for key_id in key_ids]

    async def _settle_index(self, namespace_id: str, candidates: frozenset[KeyId]) -> None:
        """Leave the index holding the keys the stored state lists, and forget the rest of `candidates`.

        Every writer adds its keys' entries only after storing its state, then runs this. Each round
        removes what the state read does not list, puts back what it does (another settler, working
        from an older read, may have removed it), and ends only when the state did not change
        meanwhile; then it narrows IndexedKeyIds to the keys, so later writes need not clean up. So
        once every writer has finished, no listed key lacks its entry. Removal can lose a race with a
        superseded writer's late addition: such an extra entry is harmless, as lookups confirm
        each candidate against its state, and goes with the namespace's next key change.
        """
        partition, row = self._namespace_address(namespace_id)
        what = f"index of namespace {namespace_id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            keys = _key_ids_from(current, "KeyIds")
            indexed = _key_ids_from(current, "IndexedKeyIds")
            changes = self._changes(namespace_id, (candidates | indexed) - keys, listed=False)
            if current is not None:
                changes += self._changes(str(current["NamespaceId"]), keys, listed=True)
            await self._change_index(changes)  # a removal and an addition are never of the same key
            again = await self._get(NAMESPACES, partition, row, what=what)
            if again is None and current is None:
                return  # gone, and nobody put it back: a later put adds its own entries after this
            if again is None or current is None or _etag(again.metadata) != _etag(current.metadata):
                continue  # someone wrote meanwhile: settle against what they stored
            if indexed == keys and _settled(current):
                return
            narrowed = dict(current)
            narrowed["IndexedKeyIds"] = _key_ids_json(keys)
            with contextlib.suppress(ValueError, TypeError):  # an unreadable summary stays: it reads as changed
                narrowed["Summary"] = json.dumps([*json.loads(current.get("Summary") or "")[:4], _SETTLED])
            client = await self._table(NAMESPACES)
            with _failures(what):
                try:
                    await client.update_entity(
                        narrowed,
                        mode=UpdateMode.REPLACE,
                        etag=_etag(current.metadata),
                        match_condition=MatchConditions.IfNotModified,
                    )
                except _CONFLICTS:
                    continue
            return
        # Writers keep coming. Removing nothing more, make sure what the state lists now is indexed: any state
        # stored after this read gets its entries from its own writer, after all our removals.
        current = await self._get(NAMESPACES, partition, row, what=what)
        if current is not None:
            await self._change_index(
                self._changes(str(current["NamespaceId"]), _key_ids_from(current, "KeyIds"), listed=True)
            )

    async def _put_state(self, state: NamespaceState) -> bool:
        partition, row = self._namespace_address(state.id)
        client = await self._table(NAMESPACES)
        what = f"namespace {state.id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            if current is not None and current["EvaluatedAt"] > state.evaluated_at:
                return False
            old_keys = _key_ids_from(current, "KeyIds")
            old_indexed = _key_ids_from(current, "IndexedKeyIds") | old_keys
            indexed = old_indexed | state.key_ids
            entity = self._state_entity(state, indexed, settled=current is None or _settled(current))
            with _failures(what):
                try:
                    await _create_or_replace(client, entity, None if current is None else _etag(current.metadata))
                except _CONFLICTS:
                    continue  # someone wrote this namespace since we read it: judge again
            if old_keys == old_indexed == state.key_ids and _settled(current):
                return True  # the index already holds exactly these keys
            await self._change_index(self._changes(state.id, state.key_ids, listed=True))
            await self._settle_index(state.id, indexed)
            return True
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def put_namespace_states(
        self, states: Iterable[NamespaceState], *, previous: Mapping[str, StateSummary] | None = None
    ) -> list[str]:
        latest: dict[str, NamespaceState] = {}
        for state in states:
            before = latest.get(state.key)
            if before is None or state.evaluated_at >= before.evaluated_at:
                latest[state.key] = state
        stale: list[str] = []
        careful: list[NamespaceState] = []  # read first, then written conditionally, one by one
        batched: list[tuple[NamespaceState, str | None]] = []  # (state, the ETag it replaces; None: a new one)
        for key, state in latest.items():
            summary = previous.get(key) if previous is not None else None
            if previous is not None and summary is None:
                batched.append((state, None))
            elif summary is not None and summary.version is not None and summary.key_ids == state.key_ids:
                if summary.evaluated_at > state.evaluated_at:
                    stale.append(state.id)
                else:
                    batched.append((state, summary.version))
            else:
                careful.append(state)
        refused = await self._put_batched(batched)
        careful += refused
        written = await self._gather(self._put_state(state) for state in careful)
        stale += [state.id for state, ok in zip(careful, written, strict=True) if not ok]
        return sorted(stale, key=namespace_key)

    async def _put_batched(self, batched: list[tuple[NamespaceState, str | None]]) -> list[NamespaceState]:
        """Write states as entity-group transactions (one partition, up to 100 entities, a few MiB each), each
        replacing what was at its ETag or inserting a new one; then index the new ones, batched by vault.

        Returns the states of the transactions Azure refused (someone wrote meanwhile): the caller writes
        those the careful way. A new state's IndexedKeyIds are its keys: no entry of it needs removing, so
        adding its entries after it is stored is all the index needs (see _settle_index).
        """
        groups: dict[str, list[_Write]] = {}
        for state, etag in batched:
            entity = self._state_entity(state, state.key_ids)
            groups.setdefault(entity["PartitionKey"], []).append((state, etag, entity))
        chunks = [chunk for group in groups.values() for chunk in _in_transactions(group, lambda w: [w[2]])]
        client = await self._table(NAMESPACES)

        async def submit(chunk: list[_Write]) -> bool:
            operations: list[wire.Operation] = [
                ("create", entity, None) if etag is None else ("update", entity, etag) for _, etag, entity in chunk
            ]
            with _failures(f"namespaces of partition {chunk[0][2]['PartitionKey']}"):
                try:
                    await _transact(lambda: wire.submit(client, operations))
                except wire.TransactionRefusedError:
                    return False
            return True

        accepted = await self._gather(submit(chunk) for chunk in chunks)
        refused = [state for chunk, ok in zip(chunks, accepted, strict=True) if not ok for state, _, _ in chunk]
        created = [
            state for chunk, ok in zip(chunks, accepted, strict=True) if ok for state, etag, _ in chunk if etag is None
        ]
        ahead = self._indexed_ahead
        await self._change_index(
            change
            for state in created
            if ahead.pop(state.key, None) != state.key_ids
            for change in self._changes(state.id, state.key_ids, listed=True)
        )
        return refused

    async def index_new_namespaces(self, namespaces: Iterable[tuple[str, frozenset[KeyId]]]) -> None:
        """Write the index entries of namespaces about to be stored for the first time, ahead of their states
        (a poll does it while it reads the keys, so Table Storage's share of a first poll overlaps the reading).
        An entry ahead of its state is never answered: lookups confirm each entry against the state. Their
        first write by this store then adds no entries; one that died between leaves entries, not a state
        without them."""
        pairs = [(namespace_id, frozenset(key_ids)) for namespace_id, key_ids in namespaces]
        self._indexed_ahead = {}
        await self._change_index(change for n, key_ids in pairs for change in self._changes(n, key_ids, listed=True))
        self._indexed_ahead = {namespace_key(namespace_id): key_ids for namespace_id, key_ids in pairs}

    async def list_namespace_summaries(self) -> list[StateSummary]:
        client = await self._table(NAMESPACES)
        with _failures("list namespace summaries"):
            entities = [entity async for page in wire.query_strings(client, None, _SUMMARY) for entity in page]
        return _summaries_from(entities)

    async def get_namespace_state(self, namespace_id: str) -> NamespaceState | None:
        partition, row = self._namespace_address(namespace_id)
        entity = await self._get(NAMESPACES, partition, row, what=f"namespace {namespace_id}")
        return None if entity is None else self._state_from(entity)

    async def list_namespace_states(self) -> list[NamespaceState]:
        client = await self._table(NAMESPACES)
        with _failures("list namespaces"):
            entities = [entity async for entity in client.list_entities()]
        return sorted((self._state_from(e) for e in entities), key=lambda s: s.key)

    async def delete_namespace_state(self, namespace_id: str) -> bool:
        partition, row = self._namespace_address(namespace_id)
        client = await self._table(NAMESPACES)
        what = f"namespace {namespace_id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            if current is None:
                return False
            with _failures(what):
                try:
                    await client.delete_entity(
                        partition, row, etag=_etag(current.metadata), match_condition=MatchConditions.IfNotModified
                    )
                except _CONFLICTS:
                    continue
            indexed = _key_ids_from(current, "IndexedKeyIds") | _key_ids_from(current, "KeyIds")
            await self._settle_index(str(current["NamespaceId"]), indexed)
            return True
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def _summaries_of(self, namespace_ids: Iterable[str]) -> list[StateSummary]:
        """The stored summaries of `namespace_ids` (those stored), partition by partition: a query for each 14
        rows (Azure allows 15 comparisons in a filter); for more than _OR_QUERIES_AT_MOST such queries, one
        query of the whole partition instead, filtered here. Azure answers a filter of OR'ed RowKeys with a
        scan of the partition, so a partition is scanned at most that many times, whatever the event."""
        by_partition: dict[str, dict[str, str]] = {}  # partition -> row -> comparable id
        for key, namespace_id in {namespace_key(n): n for n in namespace_ids}.items():
            partition, row = self._namespace_address(namespace_id)
            by_partition.setdefault(partition, {})[row] = key
        queries: list[tuple[str, list[str] | None]] = []
        for partition, rows in by_partition.items():
            if len(rows) > _ROWS_PER_QUERY * _OR_QUERIES_AT_MOST:
                queries.append((partition, None))
            else:
                ordered = sorted(rows)
                queries += [
                    (partition, ordered[i : i + _ROWS_PER_QUERY]) for i in range(0, len(ordered), _ROWS_PER_QUERY)
                ]

        async def query(partition: str, rows: list[str] | None) -> list[tuple[dict[str, str], str]]:
            client = await self._table(NAMESPACES)
            literal = wire.literal
            rows_filter = " and (" + " or ".join(f"RowKey eq {literal(row)}" for row in rows) + ")" if rows else ""
            with _failures("namespace summaries"):
                found = [
                    entity
                    async for page in wire.query_strings(
                        client, f"PartitionKey eq {literal(partition)}{rows_filter}", _SUMMARY
                    )
                    for entity in page
                ]
            wanted = set(by_partition[partition].values())
            return [entity for entity in found if namespace_key(entity[0].get("NamespaceId") or "") in wanted]

        found = await self._gather(query(partition, rows) for partition, rows in queries)
        return _summaries_from(entity for entities in found for entity in entities)

    async def _confirmed(self, ids: Iterable[str], listed: Callable[[KeyId], bool]) -> list[StateSummary]:
        """The summaries of the namespaces `ids` (what the index names) whose stored state lists a key for which
        `listed` holds. The index may briefly name more than the states do (see _settle_index): the state
        decides."""
        summaries = await self._summaries_of(ids)
        return [summary for summary in summaries if any(map(listed, summary.key_ids))]

    async def summaries_for_key(self, vault_uri: str, key_name: str) -> list[StateSummary]:
        wanted = (vault_id(vault_uri), name_id(key_name))
        users = await self._users_of_key(wanted, what=f"namespaces for key {key_name}")
        return await self._confirmed(users, lambda key_id: key_id == wanted)

    async def summaries_for_vault(self, vault_uri: str) -> list[StateSummary]:
        wanted = vault_id(vault_uri)
        users = await self._users_of_vault(wanted, what=f"namespaces for vault {vault_uri}")
        return await self._confirmed(users, lambda key_id: key_id[0] == wanted)

    async def namespaces_for_key(self, vault_uri: str, key_name: str) -> list[str]:
        return [summary.id for summary in await self.summaries_for_key(vault_uri, key_name)]

    async def namespaces_for_vault(self, vault_uri: str) -> list[str]:
        return [summary.id for summary in await self.summaries_for_vault(vault_uri)]
