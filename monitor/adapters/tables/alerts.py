"""Incidents and the alert outbox on Table Storage, in one partition per namespace so one transaction
writes an incident and its notices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode

from monitor.adapters.tables.base import TableBase
from monitor.adapters.tables.codec import (
    _OUTBOX_ROW,
    _RELEASED,
    INCIDENTS,
    _create_or_replace,
    _digest,
    _etag,
    _failures,
    _joined,
    _pack,
    _pieces,
    _time,
    _transact,
    _unpack,
)
from monitor.app.state import (
    Incident,
    OutboxEntry,
    check_outbox_of,
    namespace_key,
    utc,
)
from monitor.domain.errors import StaleWriteError


class AlertTables(TableBase):
    """Incidents and the alert outbox on Table Storage, in one partition per namespace so one transaction"""

    # -- incidents

    @staticmethod
    def _incident_address(namespace_id: str, condition: str) -> tuple[str, str]:
        return _digest(namespace_key(namespace_id)), _digest(condition)

    @staticmethod
    def _incident_from(entity: TableEntity) -> Incident:
        what = f"incident {entity.get('Condition')!r} of {entity.get('NamespaceId')}"
        return Incident(
            namespace_id=str(entity["NamespaceId"]),
            condition=str(entity["Condition"]),
            body=_unpack(_joined(entity, "Body"), what),
            open=bool(entity["Open"]),
            etag=_etag(entity.metadata),
        )

    async def get_incident(self, namespace_id: str, condition: str) -> Incident | None:
        partition, row = self._incident_address(namespace_id, condition)
        entity = await self._get(INCIDENTS, partition, row, what=f"incident {condition!r} of {namespace_id}")
        return None if entity is None else self._incident_from(entity)

    async def list_incidents(self, *, open_only: bool = False) -> list[Incident]:
        if open_only:
            entities = await self._query(INCIDENTS, "Open eq @open", what="list incidents", open=True)
        else:  # incident RowKeys are hex digests: below "g", apart from the outbox's
            entities = await self._query(INCIDENTS, "RowKey lt @end", what="list incidents", end="g")
        return sorted((self._incident_from(e) for e in entities), key=lambda i: i.key)

    async def put_incident(
        self, incident: Incident, *, expected_etag: str | None = None, outbox: Sequence[OutboxEntry] = ()
    ) -> Incident:
        check_outbox_of(incident, outbox)
        partition, row = self._incident_address(incident.namespace_id, incident.condition)
        what = f"incident {incident.condition!r} of {incident.namespace_id}"
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": incident.namespace_id,
            "Condition": incident.condition,
            "Open": incident.open,
            **_pieces(_pack(incident.body), "Body", what=what),
        }
        client = await self._table(INCIDENTS)
        if not outbox:
            with _failures(what):
                try:
                    written = await _create_or_replace(client, entity, expected_etag)
                except ResourceExistsError:
                    raise StaleWriteError(what, expected_etag, "it exists") from None
                except ResourceModifiedError:
                    raise StaleWriteError(what, expected_etag, "it has changed") from None
                except ResourceNotFoundError:
                    raise StaleWriteError(what, expected_etag, "there is none") from None
            etag = _etag(written)
        else:
            # One entity-group transaction (same partition): the incident and its notifications, or nothing.
            first: tuple[str, dict[str, Any], dict[str, Any]] = (
                ("create", entity, {})
                if expected_etag is None
                else (
                    "update",
                    entity,
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": expected_etag,
                        "match_condition": MatchConditions.IfNotModified,
                    },
                )
            )
            operations = [first, *(("create", self._outbox_entity(entry), {}) for entry in outbox)]
            with _failures(what):
                try:
                    results = await _transact(lambda: client.submit_transaction(operations))
                except TableTransactionError as error:
                    if error.index == 0 and error.status_code in {404, 409, 412}:
                        reason = {404: "there is none", 409: "it exists", 412: "it has changed"}[error.status_code]
                        raise StaleWriteError(what, expected_etag, reason) from None
                    raise
            etag = _etag(results[0])
        return Incident(
            namespace_id=incident.namespace_id,
            condition=incident.condition,
            body=incident.body,
            open=incident.open,
            etag=etag,
        )

    # -- the alert outbox

    def _outbox_address(self, entry: OutboxEntry) -> tuple[str, str]:
        return _digest(namespace_key(entry.namespace_id)), f"{_OUTBOX_ROW}{entry.id}"

    def _outbox_entity(self, entry: OutboxEntry) -> dict[str, Any]:
        partition, row = self._outbox_address(entry)
        return {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": entry.namespace_id,
            "Condition": entry.condition,
            "Sink": entry.sink,
            "CreatedAt": entry.created_at,
            "Attempts": entry.attempts,
            "NextAttemptAt": entry.next_attempt_at,
            "LastError": entry.last_error,
            # "" and the epoch for none: a property left out of a replace is gone, but None is never sent.
            "ClaimedBy": entry.claimed_by or "",
            "ClaimedUntil": entry.claimed_until or _RELEASED,
            **_pieces(_pack(entry.document), "Doc", what=f"alert {entry.id}"),
        }

    @staticmethod
    def _outbox_from(e: TableEntity) -> OutboxEntry:
        claimed_by = str(e.get("ClaimedBy") or "") or None
        return OutboxEntry(
            id=str(e["RowKey"]).removeprefix(_OUTBOX_ROW),
            namespace_id=str(e["NamespaceId"]),
            condition=str(e["Condition"]),
            sink=str(e["Sink"]),
            created_at=_time(e["CreatedAt"]),
            attempts=int(e.get("Attempts") or 0),
            next_attempt_at=_time(e["NextAttemptAt"]) if e.get("NextAttemptAt") else None,
            last_error=str(e["LastError"]) if e.get("LastError") else None,
            document=_unpack(_joined(e, "Doc"), f"alert {e['RowKey']}"),
            claimed_by=claimed_by,
            claimed_until=_time(e["ClaimedUntil"]) if claimed_by and e.get("ClaimedUntil") else None,
            etag=_etag(e.metadata),
        )

    async def list_outbox(self) -> list[OutboxEntry]:
        entities = await self._query(
            INCIDENTS, "RowKey ge @start and RowKey lt @end", what="list outbox", start=_OUTBOX_ROW, end="outbox."
        )
        return sorted((self._outbox_from(e) for e in entities), key=lambda entry: entry.id)

    async def _replace_outbox(self, entry: OutboxEntry) -> str | None:
        """Replace the stored entry with `entry` (only at entry.etag, when given): its new etag, or None when it is
        gone or changed. An update without an etag is sent with If-Match "*", so a deleted entry never returns."""
        client = await self._table(INCIDENTS)
        condition: dict[str, Any] = {}
        if entry.etag is not None:
            condition = {"etag": entry.etag, "match_condition": MatchConditions.IfNotModified}
        with _failures(f"alert {entry.id}"):
            try:
                written = await client.update_entity(self._outbox_entity(entry), mode=UpdateMode.REPLACE, **condition)
            except (ResourceNotFoundError, ResourceModifiedError):
                return None
        return _etag(written)

    async def claim_outbox_entry(self, entry: OutboxEntry, *, holder: str, until: datetime) -> OutboxEntry | None:
        if entry.etag is None:
            raise ValueError(f"alert {entry.id} has no etag: claim an entry as list_outbox returned it")
        claimed = replace(entry, claimed_by=holder, claimed_until=utc(until, "until"))
        etag = await self._replace_outbox(claimed)
        return None if etag is None else replace(claimed, etag=etag)

    async def update_outbox_entry(self, entry: OutboxEntry) -> bool:
        return await self._replace_outbox(replace(entry, claimed_by=None, claimed_until=None)) is not None

    async def delete_outbox_entry(self, entry: OutboxEntry) -> bool:
        partition, row = self._outbox_address(entry)
        client = await self._table(INCIDENTS)
        with _failures(f"alert {entry.id}"):
            etag = entry.etag
            if etag is None:
                existing = await self._get(INCIDENTS, partition, row, what=f"alert {entry.id}")
                if existing is None:
                    return False
                etag = _etag(existing.metadata)
            # A transaction of one: delete_entity itself answers a missing entity as success, which would let
            # two deliverers both believe they removed it. Conditional even without the caller's etag.
            operation = (
                "delete",
                {"PartitionKey": partition, "RowKey": row},
                {"etag": etag, "match_condition": MatchConditions.IfNotModified},
            )
            try:
                await _transact(lambda: client.submit_transaction([operation]))
            except TableTransactionError as error:
                if error.status_code in {404, 412}:
                    return False
                raise
        return True
