"""The state store port: what polls and event handlers remember between runs, and the values it holds.

A seam like those in `monitor.app.ports`, in a file of its own for its size; it imports only the domain,
and the stores in `monitor.adapters` (SQLite, Table Storage) implement it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from monitor.domain.model import KeyId, KeyRef, Namespace, name_id, vault_id

__all__ = [
    "BUDGET_KEPT",
    "EVENT_DEDUPE_TTL",
    "Incident",
    "Lease",
    "NamespaceState",
    "OutboxEntry",
    "PollMark",
    "StateStore",
    "StateSummary",
    "StoredSnapshot",
    "check_budget_request",
    "check_outbox_of",
    "key_ids_of",
    "namespace_key",
    "notice_id",
    "outbox_id",
    "utc",
]

# Budget windows kept after a newer one starts: long enough for instances whose clocks differ a little.
BUDGET_KEPT = timedelta(minutes=5)

# Event Grid redelivers for up to 24 hours; remembering ids twice as long absorbs clock skew and late retries.
EVENT_DEDUPE_TTL = timedelta(hours=48)


def namespace_key(namespace_id: str) -> str:
    """The comparable form of an ARM resource id: ARM ids are case-insensitive."""
    return namespace_id.strip().rstrip("/").lower()


def utc(t: datetime, what: str = "time") -> datetime:
    """`t` in UTC. Raises ValueError for a naive datetime, whose meaning would depend on the machine's zone."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {t.isoformat()}")
    return t.astimezone(UTC)


def key_ids_of(refs: Iterable[KeyRef]) -> frozenset[KeyId]:
    """The (vault_id, name_id) of each key reference: what the key index is keyed by."""
    return frozenset(ref.key_id for ref in refs)


def _key_id(pair: tuple[str, str]) -> KeyId:
    vault, name = pair
    return (vault_id(vault), name_id(name))


@dataclass(frozen=True, slots=True)
class NamespaceState:
    """A namespace's last judgement: its prediction document, when it was made, and the keys it lists.

    `document` is what monitor.formats.render.namespace_document() produced (JSON-ready: id, name, status_now,
    usable_keys_now, keys_total, revoked_at_earliest, revoked_by, findings, ...). `key_ids` feed the
    key and vault index; they are normalised to (vault_id, name_id). Raises ValueError when the
    document has no id or `evaluated_at` is naive.
    """

    document: Mapping[str, Any]
    evaluated_at: datetime
    key_ids: frozenset[KeyId] = frozenset()
    # Worked out once, when first asked: a poll compares them and the store then writes them.
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)
    _verdict: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        identifier = self.document.get("id")
        if not isinstance(identifier, str) or not identifier.strip():
            raise ValueError("a namespace state's document needs its ARM id under 'id'")
        # Frozen: normalise through object.__setattr__ so equal states compare equal whatever the spelling.
        object.__setattr__(self, "evaluated_at", utc(self.evaluated_at, "evaluated_at"))
        object.__setattr__(self, "key_ids", frozenset(_key_id(pair) for pair in self.key_ids))

    @classmethod
    def of(cls, namespace: Namespace, document: Mapping[str, Any], *, evaluated_at: datetime) -> NamespaceState:
        """The state of `namespace`, indexed by the keys it lists."""
        return cls(document=document, evaluated_at=evaluated_at, key_ids=key_ids_of(namespace.keys))

    @property
    def id(self) -> str:
        """The namespace's ARM id, as last written."""
        return str(self.document["id"])

    @property
    def key(self) -> str:
        """The namespace's comparable id (see namespace_key)."""
        return namespace_key(self.id)

    @property
    def name(self) -> str | None:
        value = self.document.get("name")
        return value if isinstance(value, str) else None

    @property
    def status_now(self) -> str | None:
        value = self.document.get("status_now")
        return value if isinstance(value, str) else None

    @property
    def findings(self) -> list[Mapping[str, Any]]:
        value = self.document.get("findings")
        return [f for f in value if isinstance(f, Mapping)] if isinstance(value, list) else []

    @property
    def digest(self) -> str:
        """A digest of what the state says (document and keys, not when): equal digests need no new write."""
        digest = self._digest
        if digest is None:
            content = {"document": self.document, "keys": sorted(self.key_ids)}
            canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
            digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
            object.__setattr__(self, "_digest", digest)
        return digest

    @property
    def verdict(self) -> str:
        """What must move for the state to count as changed (status, revocation window, worst finding), as JSON."""
        verdict = self._verdict
        if verdict is None:
            worst = max((f.get("severity") for f in self.findings), default=None, key=str)
            document = self.document
            verdict = json.dumps(
                [document.get("status_now"), document.get("revoked_at_earliest"), document.get("revoked_by"), worst]
            )
            object.__setattr__(self, "_verdict", verdict)
        return verdict

    def summary(self, version: str | None = None) -> StateSummary:
        return StateSummary(self.id, self.evaluated_at, self.digest, self.verdict, self.key_ids, version)


@dataclass(frozen=True, slots=True)
class StateSummary:
    """What a poll needs of a stored state to tell whether a new judgement changes it, without its document.

    `digest` and `verdict` are NamespaceState.digest and .verdict of what is stored ('' for a state stored
    before they were kept: it counts as changed). `version` is the store's own token for the stored entity
    (an ETag): given back with the state that replaces it, the store can write it without reading it again;
    None when the store must read first.
    """

    id: str
    evaluated_at: datetime
    digest: str
    verdict: str
    key_ids: frozenset[KeyId] = frozenset()
    version: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluated_at", utc(self.evaluated_at, "evaluated_at"))

    @property
    def key(self) -> str:
        return namespace_key(self.id)


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """The scenario document (monitor.domain.scenario.scenario_document) the last poll read, and when."""

    document: Mapping[str, Any]
    taken_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "taken_at", utc(self.taken_at, "taken_at"))


@dataclass(frozen=True, slots=True)
class Incident:
    """An alerting record keyed by (namespace id, condition), with a free JSON body.

    `etag` is the version the store handed out when it was read or written (None for one not yet
    stored); pass it back as `expected_etag` to update only what was read.
    """

    namespace_id: str
    condition: str
    body: Mapping[str, Any]
    open: bool = True
    etag: str | None = None

    def __post_init__(self) -> None:
        if not self.namespace_id.strip() or not self.condition:
            raise ValueError("an incident needs a namespace id and a condition")

    @property
    def key(self) -> tuple[str, str]:
        """(comparable namespace id, condition): conditions are compared exactly."""
        return (namespace_key(self.namespace_id), self.condition)


_SINK_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OUTBOX_TIME = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One notification waiting for one sink. Entries sort by `id`, which is the order they were made in.

    `id` is outbox_id(...): when it was made, the incident, the incident's notice number, the sink.
    """

    id: str
    namespace_id: str
    condition: str
    sink: str
    document: Mapping[str, Any]
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None  # None: due at once
    last_error: str | None = None  # a secret-free reason, for the log and for people
    # Who is sending it right now, and until when that claim holds (see StateStore.claim_outbox_entry).
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    # The version the store handed out with it (None: not read from a store); not part of its content.
    etag: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _SINK_NAME.match(self.sink):
            raise ValueError(f"a sink name is 1-64 letters, digits, '-' or '_', got {self.sink!r}")
        object.__setattr__(self, "created_at", utc(self.created_at, "created_at"))
        if self.next_attempt_at is not None:
            object.__setattr__(self, "next_attempt_at", utc(self.next_attempt_at, "next_attempt_at"))
        if self.claimed_until is not None:
            object.__setattr__(self, "claimed_until", utc(self.claimed_until, "claimed_until"))

    def claimed_at(self, now: datetime) -> bool:
        """Whether another deliverer's claim on it still holds at `now`."""
        return self.claimed_until is not None and utc(now, "now") < self.claimed_until

    @property
    def due_at(self) -> datetime:
        return self.next_attempt_at or self.created_at


def notice_id(created_at: datetime, namespace_id: str, condition: str, notice: int) -> str:
    """An id for an incident's notice that sorts by creation time, then by the incident's own notice order.

    Only characters Azure Table RowKeys accept; the namespace is a digest (ARM ids hold '/').
    """
    digest = hashlib.sha256(namespace_key(namespace_id).encode("utf-8")).hexdigest()[:16]
    return f"{utc(created_at, 'created_at').strftime(_OUTBOX_TIME)}-{digest}-{condition}-{notice:08d}"


def outbox_id(created_at: datetime, namespace_id: str, condition: str, notice: int, sink: str) -> str:
    """The id of a notice's entry for one sink: notice_id(...) then the sink."""
    return f"{notice_id(created_at, namespace_id, condition, notice)}-{sink}"


def check_budget_request(wanted: int, limit: int) -> None:
    """Raises ValueError unless both counts of a take_budget call are whole and not negative."""
    if wanted < 0 or limit < 0:
        raise ValueError(f"a budget request needs wanted >= 0 and limit >= 0, got wanted={wanted}, limit={limit}")


def check_outbox_of(incident: Incident, outbox: Sequence[OutboxEntry]) -> None:
    """Raises ValueError unless every entry belongs to `incident` (so one transaction can hold them)."""
    for entry in outbox:
        if (namespace_key(entry.namespace_id), entry.condition) != incident.key:
            raise ValueError(f"outbox entry {entry.id} belongs to another incident than {incident.key}")


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds the named lease, until when (exclusive: a lease is held while now < expires_at), and its
    fencing token.

    The token grows each time the lease passes to a holder (the first acquisition, one after a release or
    an expiry, a takeover) and stays while a holder extends its own: work done under a lease can be
    checked against the token, so a holder that was paused past its expiry cannot pass for the new one.
    """

    name: str
    holder: str
    expires_at: datetime
    token: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "expires_at", utc(self.expires_at, "expires_at"))

    def held_at(self, now: datetime) -> bool:
        return utc(now, "now") < self.expires_at


@dataclass(frozen=True, slots=True)
class PollMark:
    """The last poll that ran to its end and saw the whole fleet (none of it blind): who ran it, and when."""

    holder: str
    at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", utc(self.at, "at"))


class StateStore(Protocol):
    """What a poll or event handler remembers between runs, shared by every instance of the app.

    Safe for concurrent use by many tasks, processes and (for the Table store) machines. Times are
    passed in, never read from a clock, so callers and tests decide what "now" is. Every method may
    raise StateStoreError when the storage itself fails; ValueError marks a naive datetime.
    """

    # -- namespace states, and the key and vault index they maintain

    async def index_new_namespaces(self, namespaces: Iterable[tuple[str, frozenset[KeyId]]]) -> None:
        """Make ready to store, for the first time, each (namespace id, the keys it lists): a store whose index
        cannot share a transaction with the state may index them now, ahead of the states, so the write of
        the states costs less. Nothing is answered for them until their states are stored."""
        ...

    async def put_namespace_states(
        self, states: Iterable[NamespaceState], *, previous: Mapping[str, StateSummary] | None = None
    ) -> list[str]:
        """Store each state, replacing the namespace's previous one, and update the key index.

        A state evaluated earlier than the one stored is not written (a slow writer must not undo a
        newer judgement); an equal or later one replaces it. Returns the ids left alone that way.
        Within one batch, the last state of a namespace wins.

        `previous` is what list_namespace_summaries() returned (by key) when the caller read it: the store
        may write a state conditioned on its summary's version instead of reading it first, and takes a
        namespace absent from it as new. Whatever was written since is still respected, as without it.
        """
        ...

    async def list_namespace_summaries(self) -> list[StateSummary]:
        """A summary of every stored state, with its version, sorted by comparable namespace id: what a poll
        compares its judgements with, without reading every document."""
        ...

    async def get_namespace_state(self, namespace_id: str) -> NamespaceState | None:
        """The namespace's last state (id compared case-insensitively), or None."""
        ...

    async def list_namespace_states(self) -> list[NamespaceState]:
        """Every stored state, sorted by comparable namespace id."""
        ...

    async def delete_namespace_state(self, namespace_id: str) -> bool:
        """Forget a namespace that disappeared, and its index entries. True when there was one."""
        ...

    async def namespaces_for_key(self, vault_uri: str, key_name: str) -> list[str]:
        """Ids of the namespaces whose stored state lists the key (vault and name compared case-insensitively)."""
        ...

    async def namespaces_for_vault(self, vault_uri: str) -> list[str]:
        """Ids of the namespaces whose stored state lists any key of the vault."""
        ...

    async def summaries_for_key(self, vault_uri: str, key_name: str) -> list[StateSummary]:
        """The summaries (with versions) of the namespaces namespaces_for_key names, in its order: what an event
        needs to route itself and then write only what changed, without reading each state."""
        ...

    async def summaries_for_vault(self, vault_uri: str) -> list[StateSummary]:
        """The summaries of the namespaces namespaces_for_vault names, in its order."""
        ...

    # -- the last snapshot a poll read

    async def put_snapshot(self, document: Mapping[str, Any], *, taken_at: datetime) -> bool:
        """Store the scenario document a poll read; False (nothing written) when a later one is stored."""
        ...

    async def get_snapshot(self) -> StoredSnapshot | None:
        """The last stored snapshot, whole and consistent, or None."""
        ...

    # -- what polls learnt of each vault's keys: any instance, fresh or not, confirms unchanged keys from a listing

    async def put_key_records(self, records: Mapping[str, Mapping[str, Any]], *, written_at: datetime) -> None:
        """Store each vault's records (a JSON-ready document, by vault id), replacing that vault's earlier ones.

        They are a cache its reader checks against Key Vault's listing before trusting anything in them, so
        the last writer wins."""
        ...

    async def list_key_records(self) -> dict[str, dict[str, Any]]:
        """Every vault's last stored records, by vault id ({} when none)."""
        ...

    # -- the last complete poll: one small record, cheap for any instance to read (health checks, heartbeats)

    async def record_poll_completed(self, holder: str, *, at: datetime) -> None:
        """Mark a poll that ran to its end and was not blind as the last complete one; an earlier `at` than
        the stored mark's is not written (a slow poll must not turn the mark back)."""
        ...

    async def last_poll_completed(self) -> PollMark | None:
        """The mark of the last complete poll, or None when none has completed. One small read, never the snapshot."""
        ...

    # -- Event Grid deduplication

    async def mark_event_processed(self, event_id: str, *, at: datetime) -> bool:
        """Record an event id (compared exactly). True only for the one caller that recorded it first."""
        ...

    async def purge_processed_events(self, *, before: datetime) -> int:
        """Forget event ids recorded before `before` (use now - EVENT_DEDUPE_TTL). Returns how many."""
        ...

    # -- incidents, with optimistic concurrency

    async def get_incident(self, namespace_id: str, condition: str) -> Incident | None:
        """The incident with its current ETag, or None."""
        ...

    async def list_incidents(self, *, open_only: bool = False) -> list[Incident]:
        """Every incident (only open ones with `open_only`), sorted by namespace and condition."""
        ...

    async def put_incident(
        self, incident: Incident, *, expected_etag: str | None = None, outbox: Sequence[OutboxEntry] = ()
    ) -> Incident:
        """Create (expected_etag None) or replace (the ETag last read) an incident; returns it with its new ETag.

        The `outbox` entries (the incident's own: same namespace and condition) are added in the same
        transaction: a notification is queued if and only if the incident change that made it is stored.
        Raises StaleWriteError, and writes nothing, when creating one that exists, or when the stored
        one's ETag is not `expected_etag` (changed or deleted since it was read). Raises ValueError for
        an outbox entry of another incident.
        """
        ...

    # -- the alert outbox: written with incidents, drained by one deliverer at a time (hold a lease)
    #
    # Each entry read comes with its etag. A deliverer claims an entry before sending it, with a write
    # conditioned on that etag, and conditions its later write (delete, or a failed attempt) on the claim's
    # etag: a deliverer paused while another took over finds the entry changed or gone, and neither sends
    # it again nor overwrites what the other recorded.

    async def list_outbox(self) -> list[OutboxEntry]:
        """Every queued entry, with its etag, sorted by id (the order they were made in)."""
        ...

    async def claim_outbox_entry(self, entry: OutboxEntry, *, holder: str, until: datetime) -> OutboxEntry | None:
        """Mark `entry` as being sent by `holder` until `until`, only while it is as it was read (its etag).

        Returns it claimed, with its new etag; None (nothing written) when it was changed or deleted since
        it was read. Raises ValueError for an entry without an etag.
        """
        ...

    async def update_outbox_entry(self, entry: OutboxEntry) -> bool:
        """Record a failed attempt (attempts, next_attempt_at, last_error) and drop any claim.

        With an etag, only while the stored entry is still at it. False (nothing written) when the entry
        is gone, or changed since.
        """
        ...

    async def delete_outbox_entry(self, entry: OutboxEntry) -> bool:
        """Remove a delivered (or abandoned) entry, with an etag only while the stored one is still at it.

        False when it was already gone, or changed since.
        """
        ...

    # -- request budgets shared by every instance (a vault's share of its request limit)

    async def take_budget(self, scope: str, window_start: datetime, wanted: int, limit: int) -> int:
        """Grant up to `wanted` units of the budget of (`scope`, `window_start`); returns how many were granted.

        Atomic across instances: the units granted for one (scope, window) never add up to more than
        `limit` (the largest limit any caller passed, if they differ). 0 once the window is spent. Windows
        more than BUDGET_KEPT older than a new one are forgotten. Raises ValueError for a negative count.
        """
        ...

    # -- leases: one holder at a time, across processes and machines

    async def acquire_lease(self, name: str, holder: str, duration: timedelta, *, now: datetime) -> Lease | None:
        """Take the lease until now + duration when it is free, expired, or already `holder`'s.

        Returns the lease held, with its fencing token (a new, larger one unless `holder` was extending its
        own unexpired lease), or None when someone else holds it. One atomic step across instances.
        """
        ...

    async def renew_lease(
        self, name: str, holder: str, duration: timedelta, *, now: datetime, token: int
    ) -> Lease | None:
        """Extend the lease to now + duration while it is still `holder`'s under `token` and unexpired.

        Returns the renewed lease, or None (nothing changed) when it expired, was released, or passed to
        someone (a later token): the caller has lost it and must stop the work it guards.
        """
        ...

    async def release_lease(self, name: str, holder: str, *, token: int | None = None) -> bool:
        """Give the lease up (only under `token` when given); False (and nothing changed) when `holder` does
        not hold it. The next acquisition gets a larger token than any given before."""
        ...

    async def get_lease(self, name: str) -> Lease | None:
        """The lease's record, expired or not, or None when nobody has it (never taken, or released)."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
