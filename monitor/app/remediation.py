"""Remediation: act on the plan behind guard rails, and audit every decision.

Off unless KEYHEALTH_REMEDIATION says otherwise. Each action: allowed by the switches and allow-lists
(the plan), not cooling down after a failure, one instance at a time per target (a lease), idempotent
(what is read again now decides: a rotation someone else made is not made again), within the hourly
rate limit, then verified. Every decision is a log record; what was done, would be done (dry run) or
failed is also an alert to the namespace's people.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app.alerting import Alerting, queue_action_notice
from monitor.app.ports import KeyReader, KeyRemediator
from monitor.app.state import StateStore
from monitor.app.telemetry import count_remediation
from monitor.domain.alert import AlertAction
from monitor.domain.documents import format_instant
from monitor.domain.errors import ReadError, RemediationError
from monitor.domain.fleet import NamespaceReport
from monitor.domain.incidents import Level
from monitor.domain.model import POLL_INTERVAL, Key, KeyVersion, name_id, vault_id
from monitor.domain.remediation import (
    Action,
    Mode,
    Proposal,
    RemediationPolicy,
    plan,
    policy_expiry,
    policy_rotates_at,
    version_fit,
)
from monitor.domain.world import World

LOG = logging.getLogger("keyhealth.remediation")
ACTION_LEASE = timedelta(minutes=5)
DRY_RUN_NOTICE_EVERY = timedelta(hours=24)  # a dry run repeats its plan every poll; people hear it daily

_PERMISSION_HINTS = {
    Action.ROTATE: "grant the monitor's identity Key Vault Crypto Officer on the key (keys: get, create, rotate, "
    "get rotation policy)",
    Action.RECOVER: "grant the monitor's identity keys recover on the vault (a deleted key has no key scope)",
    Action.UNPIN: "grant the monitor's identity write on the namespace (Microsoft.ServiceBus/namespaces/write)",
}


@dataclass(frozen=True, slots=True)
class Remediation:
    """What acting needs: the writes, a way to read keys again, and the rules."""

    remediator: KeyRemediator
    keys: KeyReader
    policy: RemediationPolicy


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one proposal: done, dry-run, skipped, failed or blocked, and why."""

    proposal: Proposal
    status: str
    detail: str
    new_version: str | None = None

    def describe(self) -> str:
        return f"{self.proposal.action.value} {self.proposal.target}: {self.status}: {self.detail}"


def _current(key: Key, now: datetime) -> KeyVersion | None:
    live = [v for v in key.versions if v.created <= now]
    return max(live, key=lambda v: v.created) if live else None


def _who(proposal: Proposal, now: datetime) -> str:
    names = ", ".join(proposal.namespaces[:5]) + (" and others" if len(proposal.namespaces) > 5 else "")
    return f"{names} pick{'s' if len(proposal.namespaces) == 1 else ''} it up by {format_instant(now + POLL_INTERVAL)}"


async def remediate(
    remediation: Remediation,
    store: StateStore,
    alerting: Alerting | None,
    reports: Sequence[NamespaceReport],
    world: World,
    *,
    now: datetime,
    holder: str,
    dry_run: bool = False,
) -> list[Outcome]:
    """Plan for `reports`, then act (or, dry, say what would be done). Raises StateStoreError."""
    proposals = plan(reports, world, remediation.policy, now=now)
    by_id = {r.prediction.namespace.id: r for r in reports}
    outcomes = []
    for proposal in proposals:
        outcome = await _decide(remediation, store, proposal, now=now, holder=holder, dry_run=dry_run)
        _audit(outcome)
        if alerting is not None and outcome.status in {"done", "failed", "dry-run"}:
            await _notify(alerting, store, outcome, by_id, now)
        outcomes.append(outcome)
    return outcomes


def _audit(outcome: Outcome) -> None:
    count_remediation(outcome.proposal.action.value, outcome.status)
    level = {"failed": logging.ERROR, "done": logging.WARNING, "blocked": logging.DEBUG}.get(
        outcome.status, logging.INFO
    )
    proposal = outcome.proposal
    LOG.log(
        level,
        "keyhealth remediation: %s",
        outcome.describe(),
        extra={
            "remediation": {
                "action": proposal.action.value,
                "target": proposal.target,
                "status": outcome.status,
                "detail": outcome.detail,
                "namespaces": list(proposal.namespace_ids),
                "new_version": outcome.new_version,
            }
        },
    )


async def _notify(
    alerting: Alerting, store: StateStore, outcome: Outcome, by_id: Mapping[str, NamespaceReport], now: datetime
) -> None:
    proposal = outcome.proposal
    if outcome.status == "dry-run":
        notice_lease = f"notice:{proposal.lease_name}"
        # A holder of its own each time: whoever holds the day-long lease already told people.
        if not await store.acquire_lease(notice_lease, f"dry-run:{uuid.uuid4().hex}", DRY_RUN_NOTICE_EVERY, now=now):
            return
    report = next((by_id[n] for n in proposal.namespace_ids if n in by_id), None)
    if report is None:
        return
    action = AlertAction(proposal.action.value, outcome.status, proposal.target, outcome.detail)
    level = Level.CRITICAL if outcome.status == "failed" else Level.WARNING
    await queue_action_notice(alerting, report, action, level=level, now=now)


async def _decide(
    remediation: Remediation, store: StateStore, proposal: Proposal, *, now: datetime, holder: str, dry_run: bool
) -> Outcome:
    policy = remediation.policy
    if proposal.blocked is not None:
        return Outcome(proposal, "blocked", proposal.blocked)
    if proposal.action is not Action.UNPIN and not policy.key_allowed(proposal.vault, proposal.key):
        # The plan gates on the same policy; a proposal made any other way still writes no key off the list.
        return Outcome(proposal, "blocked", f"key {proposal.key_label} is not in KEYHEALTH_REMEDIATION_KEYS")
    cooldown = await store.get_lease(f"cooldown:{proposal.lease_name}")
    if cooldown is not None and cooldown.held_at(now):
        return Outcome(proposal, "skipped", f"cooling down after a failure until {format_instant(cooldown.expires_at)}")
    # Unique per decision: two tasks of one process (a poll and an event) must exclude each other too.
    me = f"{holder}:{uuid.uuid4().hex[:12]}"
    if not await store.acquire_lease(proposal.lease_name, me, ACTION_LEASE, now=now):
        return Outcome(proposal, "skipped", "another instance is acting on it")
    try:
        try:
            state = await _read_again(remediation, proposal, now)
        except (ReadError, RemediationError) as failure:
            return await _failed(store, proposal, failure, now, policy)
        if isinstance(state, str):
            return Outcome(proposal, "skipped", state)
        if dry_run or policy.mode is Mode.DRY_RUN:
            return Outcome(proposal, "dry-run", f"would {_would(proposal)} ({proposal.reason})")
        if not await _take_slot(store, me, policy, now):
            return Outcome(
                proposal,
                "skipped",
                f"rate limit: {policy.max_per_hour} actions in the last hour (KEYHEALTH_REMEDIATION_MAX_PER_HOUR)",
            )
        try:
            return await _act(remediation, proposal, state, now)
        except (ReadError, RemediationError) as failure:
            return await _failed(store, proposal, failure, now, policy)
    finally:
        await store.release_lease(proposal.lease_name, me)


def _would(proposal: Proposal) -> str:
    if proposal.action is Action.UNPIN:
        return f"unpin {proposal.namespaces[0]} from version {proposal.version} of {proposal.key_label}"
    return f"{proposal.action.value} {proposal.key_label}"


async def _take_slot(store: StateStore, me: str, policy: RemediationPolicy, now: datetime) -> bool:
    """One of `max_per_hour` hour-long leases, so the limit holds across instances."""
    for slot in range(policy.max_per_hour):
        if await store.acquire_lease(f"remediation-slot-{slot}", me, timedelta(hours=1), now=now):
            return True
    return False


async def _failed(
    store: StateStore, proposal: Proposal, failure: Exception, now: datetime, policy: RemediationPolicy
) -> Outcome:
    """A failure starts a cooldown on the target: no retry storm, one alert per cooldown."""
    await store.acquire_lease(
        f"cooldown:{proposal.lease_name}", f"failure:{uuid.uuid4().hex}", policy.cooldown, now=now
    )
    if isinstance(failure, RemediationError):
        reason = failure.reason
        if failure.denied:
            reason += f"; {_PERMISSION_HINTS[proposal.action]}"
    else:
        reason = str(failure)
    return Outcome(proposal, "failed", f"could not {_would(proposal)}: {reason}; next try after {policy.cooldown}")


@dataclass(frozen=True, slots=True)
class _Rotation:
    current: KeyVersion
    policy: Mapping[str, object] | None


async def _read_again(remediation: Remediation, proposal: Proposal, now: datetime) -> _Rotation | str | None:
    """What is true now; a string when that makes the action needless (or wrong)."""
    if proposal.action is Action.UNPIN:
        assert proposal.namespace_id is not None  # noqa: S101 - narrows the type; holds by construction
        refs = await remediation.remediator.get_key_references(proposal.namespace_id)
        wanted = (vault_id(proposal.vault), name_id(proposal.key))
        mine = next((r for r in refs if r.key_id == wanted), None)
        if mine is None:
            return "the namespace no longer lists the key"
        if mine.version is None:
            return "the reference is already versionless"
        return None
    key = await remediation.keys.get_key(proposal.vault, proposal.key)
    if key is None:
        return "the key no longer exists"
    if proposal.action is Action.RECOVER:
        return None if key.deleted else "the key is not deleted any more"
    current = _current(key, now)
    if key.deleted or current is None:
        return "the key is deleted: recover it first"
    lasts_until = now + remediation.policy.rotate_within
    if (
        name_id(current.version) != name_id(proposal.version or "")
        and version_fit(current, now=now, lasts_until=lasts_until) is None
    ):
        return f"already rotated: version {current.version} is current and usable"
    rotation_policy = await remediation.remediator.get_rotation_policy(proposal.vault, proposal.key)
    rotates_at = policy_rotates_at(rotation_policy, current)
    deadline = proposal.deadline or now
    if rotates_at is not None and now < rotates_at <= deadline:
        return (
            f"Key Vault's rotation policy rotates it at {format_instant(rotates_at)}, before it expires; "
            "keyhealth does not compete with it"
        )
    return _Rotation(current, rotation_policy)


async def _act(remediation: Remediation, proposal: Proposal, state: _Rotation | None, now: datetime) -> Outcome:
    remediator = remediation.remediator
    if proposal.action is Action.RECOVER:
        await remediator.recover_key(proposal.vault, proposal.key)
        key = await remediation.keys.get_key(proposal.vault, proposal.key)
        if key is None or key.deleted:
            return Outcome(proposal, "failed", "recovery was accepted but the key still reads as deleted")
        return Outcome(proposal, "done", f"recovered {proposal.key_label}; {_who(proposal, now)}")
    if proposal.action is Action.UNPIN:
        assert proposal.namespace_id is not None  # noqa: S101 - narrows the type; holds by construction
        await remediator.unpin(proposal.namespace_id, proposal.vault, proposal.key)
        refs = await remediator.get_key_references(proposal.namespace_id)
        wanted = (vault_id(proposal.vault), name_id(proposal.key))
        if any(r.key_id == wanted and r.version is not None for r in refs):
            return Outcome(proposal, "failed", "the update was accepted but the reference is still pinned")
        return Outcome(
            proposal,
            "done",
            f"unpinned {proposal.namespaces[0]} from version {proposal.version} of {proposal.key_label}: it now "
            f"follows the key's current version from its next poll, by {format_instant(now + POLL_INTERVAL)}",
        )
    assert state is not None  # noqa: S101 - narrows the type; holds by construction
    lifetime = policy_expiry(state.policy)
    if lifetime is not None:
        new_version = await remediator.rotate_key(proposal.vault, proposal.key)
    else:  # no policy expiry: a rotation would make a version that never expires; give it the configured one
        new_version = await remediator.create_key_version(
            proposal.vault, proposal.key, like=state.current, expires_on=now + remediation.policy.new_key_lifetime
        )
    key = await remediation.keys.get_key(proposal.vault, proposal.key)
    made = _current(key, now) if key is not None else None
    if made is None or name_id(made.version) == name_id(state.current.version):
        return Outcome(proposal, "failed", f"the new version {new_version} does not read back as current")
    unfit = version_fit(made, now=now, lasts_until=now + remediation.policy.rotate_within)
    if unfit is not None:
        return Outcome(proposal, "failed", f"the new version {made.version} cannot serve: {unfit}", made.version)
    expires = f" (expires {format_instant(made.exp)})" if made.exp else ""
    return Outcome(
        proposal,
        "done",
        f"rotated {proposal.key_label}: new version {made.version}{expires}; {_who(proposal, now)}",
        made.version,
    )
