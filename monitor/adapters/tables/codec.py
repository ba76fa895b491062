"""How the Table Storage store lays out and encodes entities: table names, digests for keys, documents
in compressed pieces under the property limit, ETag-conditional writes, and Azure failures as StateStoreError."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from monitor.adapters.azure_clients import describe_failure
from monitor.adapters.packing import packed_json
from monitor.app.state import (
    utc,
)
from monitor.domain.errors import StateStoreError
from monitor.domain.model import KeyId

T = TypeVar("T")

# Azure limits: 64 KiB a property, 1 MiB an entity. Pieces of 60,000 bytes, 12 to an entity, leave room
# for the keys and the other properties (and for Azurite, which enforces the property limit).
_PIECE = 60_000
_PIECES_PER_ENTITY = 12
_RACE_RETRIES = 8  # conditional writes re-read and try again this often before giving up
_SNAPSHOT_READS = 5  # a snapshot replaced while being read is read again this often
_TRANSACTION_ATTEMPTS = 3  # a transaction whose connection failed is sent this often in all
_BATCH = 100  # entities an entity-group transaction may hold
_BATCH_BYTES = 2_000_000  # of documents in one: binary goes base64 (4/3) under the 4 MiB payload limit
_ROWS_PER_QUERY = 14  # Azure allows 15 comparisons in a filter: the partition's, and 14 rows'
_PARTITION_SAFE = re.compile(r"^[0-9a-z-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,40}$")
_CONFLICTS = (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError)
_NO_ECHO = {"response_preference": "return-no-content"}  # inserts would otherwise send the entity back


async def _create_or_replace(client: TableClient, entity: dict[str, Any], etag: str | None) -> Any:
    """Insert `entity` (etag None) or replace it only while it is still at `etag`; conflicts raise _CONFLICTS."""
    if etag is None:
        return await client.create_entity(entity, **_NO_ECHO)
    return await client.update_entity(
        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
    )


NAMESPACES, KEY_USERS, SNAPSHOT, EVENTS, INCIDENTS, LEASES, MARKS, BUDGETS, KEY_RECORDS = (
    "namespaces",
    "keyusers",
    "snapshot",
    "events",
    "incidents",
    "leases",
    "marks",
    "budgets",
    "keyrecords",
)
_TABLES = (NAMESPACES, KEY_USERS, SNAPSHOT, EVENTS, INCIDENTS, LEASES, MARKS, BUDGETS, KEY_RECORDS)
_WINDOW_ROW = "%Y%m%dT%H%M%S.%fZ"
_POLL_MARK = ("poll", "last-complete")
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)  # a released lease's expiry: before any `now`
_SNAPSHOT_PARTITION = "snapshot"
_HEAD = "head"
_EVENT_PARTITION = "event"
_LEASE_PARTITION = "lease"
_OUTBOX_ROW = "outbox-"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pieces(data: bytes, prefix: str, *, what: str) -> dict[str, bytes]:
    """`data` split into binary properties prefix00, prefix01, … that each fit the property limit."""
    pieces = [data[i : i + _PIECE] for i in range(0, len(data), _PIECE)] or [b""]
    if len(pieces) > _PIECES_PER_ENTITY:
        raise StateStoreError(what, f"{len(data)} compressed bytes do not fit one Table entity")
    return {f"{prefix}{n:02d}": piece for n, piece in enumerate(pieces)}


def _joined(entity: Mapping[str, Any], prefix: str) -> bytes:
    names = sorted(k for k in entity if k.startswith(prefix) and k[len(prefix) :].isdigit())
    return b"".join(bytes(entity[k]) for k in names)


def _pack(document: Mapping[str, Any]) -> bytes:
    return packed_json(document)


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(zlib.decompress(data).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateStoreError(what, f"stored document is unreadable: {error}") from error
    if not isinstance(document, dict):
        raise StateStoreError(what, "stored document is not a JSON object")
    return document


def _key_ids_json(key_ids: Iterable[KeyId]) -> str:
    return json.dumps(sorted([vault, name] for vault, name in key_ids))


def _key_ids_from(entity: Mapping[str, Any] | None, name: str) -> frozenset[KeyId]:
    if entity is None:
        return frozenset()
    return frozenset((str(vault), str(key)) for vault, key in json.loads(entity.get(name) or "[]"))


def _time(value: datetime) -> datetime:
    """A stored time as a plain UTC datetime (the SDK hands out its own datetime subclass)."""
    t = utc(value, "stored time")
    return datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)


def _etag(metadata: Mapping[str, Any]) -> str:
    return str(metadata["etag"])


async def _back_off(attempt: int) -> None:
    """Wait a random while before retry `attempt` (none before the first), so racing writers spread out."""
    if attempt:
        await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 - jitter, not a secret


async def _transact(send: Callable[[], Awaitable[T]]) -> T:
    """`send()` (a transaction), sent again when its connection failed (ServiceRequestError).

    A transaction is a POST, which azure-core never retries after a connection failure, since it cannot tell
    whether the server applied it. A pooled connection the server closed while idle (Azurite after 5 s, Azure's
    front ends after minutes) fails that way. Ours may be sent twice: a create or an ETag-conditional write
    applied the first time is refused the second (which each caller handles as a race), and an upsert is the
    same write again.
    """
    for attempt in range(_TRANSACTION_ATTEMPTS):
        await _back_off(attempt)
        try:
            return await send()
        except ServiceRequestError:
            if attempt == _TRANSACTION_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _create_once(client: TableClient, entity: dict[str, Any]) -> bool | None:
    """Insert `entity`, sent again when its connection failed (_transact): True when this call created it,
    False when it was there already; None when only a resend found it there, which the lost send may have
    written (the caller tells by reading it, or by what it means)."""
    sends = 0

    async def send() -> None:
        nonlocal sends
        sends += 1
        await client.create_entity(entity, **_NO_ECHO)

    try:
        await _transact(send)
    except ResourceExistsError:
        return False if sends == 1 else None
    return True


def _in_transactions(items: Iterable[T], entities: Callable[[T], Sequence[Mapping[str, Any]]]) -> Iterator[list[T]]:
    """`items` of one partition, in order, in groups one transaction may hold: at most _BATCH of the entities
    each item writes, and _BATCH_BYTES of their binary properties (with room for the rest). An item's entities
    are never split."""
    group: list[T] = []
    count = size = 0
    for item in items:
        written = entities(item)
        weight = sum(2_000 + sum(len(v) for v in e.values() if isinstance(v, bytes)) for e in written)
        if group and (count + len(written) > _BATCH or size + weight > _BATCH_BYTES):
            yield group
            group, count, size = [], 0, 0
        group.append(item)
        count, size = count + len(written), size + weight
    if group:
        yield group


@contextlib.contextmanager
def _failures(what: str) -> Iterator[None]:
    """Azure failures other than the races each method handles, as StateStoreError (secret-free reasons)."""
    try:
        yield
    except AzureError as error:
        raise StateStoreError(what, describe_failure(error)) from error


def _public_url(url: str) -> str:
    """The account URL without its query: a SAS token there would be a secret."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
