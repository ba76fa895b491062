"""The stand-in's Service Bus: each namespace polls the keys in its record every 300 s at a phase of its own, and
the vaults' audit logs record each call, as Key Vault's `AuditEvent` logs do.

A poll calls each key of the namespace's record through the identity its reference names: `KeyGet`, then, when
that succeeds, `KeyUnwrap`. Whether a call succeeds is the stand-in's own Key Vault judging it at the poll's
instant by the rules of usability (a firewall without the trusted-services bypass fails it, whatever it lets the
monitor do), plus what only the service meets: a block put on a vault for the service alone (`deny_service`, as
a deny assignment or a network security perimeter would). A vault that does not exist, or an identity that is
not on the namespace, makes no call, so the log has nothing of it.

The record: a listed key enters it when first listed; a key whose call failed at a poll where another key
served is dropped from it and not called again (the service has moved on to the keys that work) until it is
listed anew. At a poll where no key serves, the namespace is revoked and every listed key is called again.

Polls are played lazily, up to the instant a query asks about, and kept for RETENTION; a clock that jumps ahead
plays the last RETENTION of the gap, and the two polls after each change within it (so the record follows).
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from monitor.domain.model import POLL_INTERVAL, KeyRef, key_url, name_id, vault_id
from monitor.domain.usability import Reason, assess_as
from monitor.sandbox.state import SandboxState

RETENTION = timedelta(hours=2)
# Polls played before the clock's start, so a monitor's first look already finds a history.
DEFAULT_HISTORY = timedelta(minutes=20)
# How long after a call its row can be queried: Azure Monitor documents 20 s to 3 minutes as typical.
DEFAULT_INGESTION = timedelta(seconds=30)
# A poll's calls on its keys follow each other this far apart.
CALL_SPACING = timedelta(milliseconds=40)
PERIOD = POLL_INTERVAL.total_seconds()

# What Key Vault answers the service's call, by the first rule that fails it.
_STATUS = {
    Reason.VAULT_FIREWALL: 403,
    Reason.ACCESS_DENIED: 403,
    Reason.KEY_MISSING: 404,
    Reason.KEY_DELETED: 404,
    Reason.KEY_DISABLED: 403,
    Reason.KEY_NOT_YET_VALID: 403,
    Reason.KEY_EXPIRED: 403,
    Reason.KEY_OPS_MISSING: 403,
}
# No call reaches the vault: no log row.
_SILENT = frozenset({Reason.VAULT_MISSING, Reason.IDENTITY_MISSING})


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One key call as the vault's audit log records it (the columns keyhealth's query projects, and more)."""

    at: datetime
    vault_host: str
    vault_resource_id: str
    principal: str
    operation: str  # KeyGet, KeyUnwrap
    status: int
    key: str  # the key's URL with its version when the call reached one, as `Id` carries it
    request_uri: str


@dataclass(slots=True)
class _Record:
    listed: set[KeyRef] = field(default_factory=set)  # what the namespace listed at its last poll
    dropped: set[KeyRef] = field(default_factory=set)


def phase_of(namespace_id: str) -> float:
    """The namespace's poll phase in [0, 300): stable per namespace, to the millisecond."""
    digest = hashlib.sha256(name_id(namespace_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % int(PERIOD * 1000) / 1000


def _poll_instants(phase: float, start: datetime, end: datetime) -> list[datetime]:
    """The poll instants in (start, end]."""
    epoch = datetime(1970, 1, 1, tzinfo=start.tzinfo)
    offset = ((start - epoch).total_seconds() - phase) % PERIOD
    first = start + timedelta(seconds=PERIOD - offset) if offset > 1e-9 else start + POLL_INTERVAL
    instants = []
    at = first
    while at <= end:
        instants.append(at)
        at += POLL_INTERVAL
    return instants


def references(document: Mapping[str, Any]) -> tuple[tuple[KeyRef, str | None], ...]:
    """The keys a namespace document lists, each with the principal its calls are made as (None: not on it)."""
    properties = document.get("properties") or {}
    encryption = properties.get("encryption") or {}
    identity = document.get("identity") or {}
    users = {
        name_id(k): (v or {}).get("principalId") for k, v in (identity.get("userAssignedIdentities") or {}).items()
    }
    found = []
    for entry in encryption.get("keyVaultProperties") or []:
        user = ((entry.get("identity") or {}).get("userAssignedIdentity")) or None
        principal = users.get(name_id(user)) if user else identity.get("principalId")
        ref = KeyRef(
            vault=str(entry.get("keyVaultUri") or "").rstrip("/"),
            name=str(entry.get("keyName") or ""),
            version=entry.get("keyVersion") or None,
            identity=user,
        )
        found.append((ref, name_id(principal) if principal else None))
    return tuple(found)


class ServiceBusPolls:
    """The polls of every namespace the stand-in holds, and the audit rows they left."""

    def __init__(
        self,
        state: SandboxState,
        clock: Callable[[], datetime],
        *,
        history: timedelta = DEFAULT_HISTORY,
        ingestion: timedelta = DEFAULT_INGESTION,
    ) -> None:
        self._state = state
        self.ingestion = ingestion
        self._clock = clock
        start = clock()
        self._lock = threading.Lock()
        self._origin = start - history
        self._played_to = self._origin
        self._records: dict[str, _Record] = {}
        self._rows: list[AuditRow] = []
        self._times: list[datetime] = []
        self._denied: set[str] = set()
        self.phases: dict[str, float] = {}  # namespace id -> phase, once played

    def deny_service(self, vault: str) -> None:
        """Fail every call the service makes on the vault from now on (403), where the monitor's reads still pass."""
        with self._lock:
            self._play(self._clock())  # the polls before now were made without it
            self._denied.add(self._state.vault(vault).host)

    def allow_service(self, vault: str) -> None:
        with self._lock:
            self._play(self._clock())
            self._denied.discard(self._state.vault(vault).host)

    def rows(self, since: datetime, until: datetime, *, now: datetime) -> list[AuditRow]:
        """The rows a query at `now` finds in [since, until): played up to `now` first, and only those ingested
        by then (a call's row lands `ingestion` after it)."""
        with self._lock:
            self._play(now)
            end = min(until, now - self.ingestion)
            low = bisect.bisect_left(self._times, since)
            high = bisect.bisect_left(self._times, end)
            return self._rows[low:high]

    def _play(self, now: datetime) -> None:
        if now < self._played_to:
            return  # the clock went back: what was logged stays logged, as a real log's would
        start = max(self._played_to, now - RETENTION)
        # A jump past RETENTION still plays the two polls after each change it skips: the record (which keys
        # were dropped) follows the world, though the rows of those polls are past keeping.
        skipped = sorted({c.at for c in self._state.changes if self._played_to < c.at < start})
        polls: list[tuple[datetime, str, dict[str, Any]]] = []
        for document in self._state.namespaces():
            namespace_id = str(document.get("id") or "")
            if not namespace_id:
                continue
            phase = self.phases.setdefault(namespace_id, phase_of(namespace_id))
            instants = set(_poll_instants(phase, start, now))
            for at in skipped:
                instants.update(i for i in _poll_instants(phase, at, at + 2 * POLL_INTERVAL) if i < start)
            polls.extend((at, namespace_id, document) for at in sorted(instants))
        polls.sort(key=lambda poll: poll[0])
        world = self._state.world
        for at, namespace_id, document in polls:
            self._poll(world, at, namespace_id, document)
        self._played_to = now
        cutoff = bisect.bisect_left(self._times, now - RETENTION)
        if cutoff:
            del self._rows[:cutoff]
            del self._times[:cutoff]

    def _poll(self, world: Any, at: datetime, namespace_id: str, document: Mapping[str, Any]) -> None:
        record = self._records.setdefault(namespace_id, _Record())
        listed = references(document)
        refs = {ref for ref, _ in listed}
        record.dropped &= refs  # a key no longer listed leaves the record; listed anew, it is called again
        record.listed = refs
        served: list[KeyRef] = []
        failed: list[KeyRef] = []
        offset = timedelta(0)
        for ref, principal in listed:
            if ref in record.dropped:
                continue
            status = self._status(world, ref, principal, at)
            if status is None:
                failed.append(ref)
                continue
            self._log(at + offset, ref, principal, status, world)
            offset += CALL_SPACING * 2
            (served if status == 200 else failed).append(ref)
        if served:
            record.dropped |= set(failed)
        else:
            record.dropped.clear()  # revoked: the service tries every listed key again at the next poll

    def _status(self, world: Any, ref: KeyRef, principal: str | None, at: datetime) -> int | None:
        """Key Vault's answer to the service's call, or None when no call reaches the vault."""
        assessment = assess_as(world, ref, principal, at)
        reasons = set(assessment.reasons)
        if reasons & _SILENT:
            return None
        info = self._state.vault_by_host(_host(ref.vault))
        if info is not None and info.host in self._denied:
            return 403
        for reason in assessment.reasons:
            if reason in _STATUS:
                return _STATUS[reason]
        return 200

    def _log(self, at: datetime, ref: KeyRef, principal: str | None, status: int, world: Any) -> None:
        info = self._state.vault_by_host(_host(ref.vault))
        if info is None or principal is None:
            return
        key_state = world.key_at((vault_id(ref.vault), name_id(ref.name)), at)
        version = ref.version
        if version is None and key_state.exists:
            current = key_state.current_version(at)
            version = current.version if current is not None else None
        base = key_url(f"https://{info.host}", ref.name)
        versioned = f"{base}/{version}" if version else base
        request = f"{versioned}?api-version=7.4"
        calls = [("KeyGet", status)]
        if status == 200:
            calls.append(("KeyUnwrap", 200))
        for index, (operation, code) in enumerate(calls):
            row = AuditRow(
                at=at + CALL_SPACING * index,
                vault_host=info.host,
                vault_resource_id=info.resource_id,
                principal=principal,
                operation=operation,
                status=code,
                key=versioned if code == 200 else "",
                request_uri=request if operation == "KeyGet" else f"{versioned}/unwrapkey?api-version=7.4",
            )
            position = bisect.bisect_right(self._times, row.at)
            self._times.insert(position, row.at)
            self._rows.insert(position, row)


def _host(vault_uri: str) -> str:
    return vault_uri.split("://", 1)[-1].split("/", 1)[0].lower()
