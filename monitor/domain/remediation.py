"""Remediation planning: which keys to rotate or recover and which namespaces to unpin, and why not.

Pure: it proposes from judged namespaces; monitor.app.remediation re-reads, guards and acts. Never
anything that disables, deletes or purges.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from monitor.domain.errors import KeyPatternError
from monitor.domain.fleet import NamespaceReport
from monitor.domain.model import KeyId, KeyVersion, NamespaceKind, key_url, kind_of, vault_short_name
from monitor.domain.names import VAULT_SUFFIXES, ascii_fold, is_key_name, is_vault_name, vault_uri_host
from monitor.domain.prediction import Status
from monitor.domain.usability import Reason, assess
from monitor.domain.world import World


class Action(enum.Enum):
    ROTATE = "rotate"  # a fresh version, which versionless references pick up at the next poll
    RECOVER = "recover"  # a soft-deleted key back
    UNPIN = "unpin"  # a namespace's pinned reference made versionless (separate opt-in)


class Mode(enum.Enum):
    OFF = "off"
    DRY_RUN = "dry-run"  # plan, log and alert what would be done; write nothing
    ON = "on"


# The data-plane DNS suffixes of Key Vault and Managed HSM in Azure's clouds (public, China, US Government).
KEY_VAULT_DNS_SUFFIXES = VAULT_SUFFIXES
KEY_PATTERN_FORM = (
    "expected https://<vault-name>.<suffix>/keys/<key-name>, the vault host written out in full with a Key Vault "
    f"suffix ({', '.join(KEY_VAULT_DNS_SUFFIXES)}); the key name may use * and ?, nothing else may"
)
# Key names as Key Vault's grammar has them (monitor/domain/names.py), with the wildcards * and ?.
_KEY_NAME_PATTERN = re.compile(r"[0-9a-z*?-]{1,127}")


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """One allow-listed key pattern: an exact vault host (name and cloud suffix) and a shell pattern on key names.

    A wildcard is matched against the key name alone, so it can neither cross a dot of the host nor reach
    another vault or another cloud.
    """

    host: str  # lower case: kv-prod.vault.azure.net
    key: str  # lower case shell pattern (* and ?): sb-*

    def __str__(self) -> str:
        return f"https://{self.host}/keys/{self.key}"

    @property
    def vault_name(self) -> str:
        return self.host.split(".", 1)[0]

    @property
    def literal(self) -> bool:
        """The pattern names one key (no wildcard), which a role assignment can be scoped to."""
        return not any(c in self.key for c in "*?")

    def matches(self, vault_uri: str, name: str) -> bool:
        host = vault_uri_host(vault_uri)
        key = name.strip()
        return host == self.host and is_key_name(key) and fnmatch.fnmatchcase(ascii_fold(key), self.key)


def parse_key_pattern(text: str) -> KeyPattern:
    """A KeyPattern from `https://<vault-name>.<suffix>/keys/<key-name pattern>`.

    Raises KeyPatternError saying what is wrong, for anything that does not pin one vault host of a known cloud.
    """
    raw = text.strip()
    scheme, separator, rest = raw.partition("://")
    if not separator or scheme.lower() != "https":
        raise KeyPatternError(raw, KEY_PATTERN_FORM)
    host, slash, path = rest.partition("/")
    host = ascii_fold(host)
    if not slash or not ascii_fold(path).startswith("keys/"):
        raise KeyPatternError(raw, KEY_PATTERN_FORM)
    if any(c in host for c in "*?[]"):
        raise KeyPatternError(raw, f"a wildcard in the vault host matches more than one vault; {KEY_PATTERN_FORM}")
    name, dot, suffix = host.partition(".")
    if not dot or suffix not in KEY_VAULT_DNS_SUFFIXES:
        raise KeyPatternError(raw, f"{host!r} is not a Key Vault or Managed HSM host; {KEY_PATTERN_FORM}")
    if not is_vault_name(name):
        raise KeyPatternError(
            raw,
            f"{name!r} is not a vault name (3-24 letters, digits and single hyphens, starting with a letter); "
            f"{KEY_PATTERN_FORM}",
        )
    key = ascii_fold(path[len("keys/") :])
    if "/" in key:
        raise KeyPatternError(raw, f"patterns name keys, not versions or paths; {KEY_PATTERN_FORM}")
    if not _KEY_NAME_PATTERN.fullmatch(key):
        raise KeyPatternError(
            raw,
            f"{key!r} is not a key name pattern (1-127 letters, digits and hyphens, with * and ?); {KEY_PATTERN_FORM}",
        )
    return KeyPattern(host, key)


@dataclass(frozen=True, slots=True)
class RemediationPolicy:
    """What may be done, to what, and how much (the KEYHEALTH_REMEDIATION_* settings)."""

    mode: Mode = Mode.OFF
    actions: frozenset[Action] = frozenset({Action.ROTATE, Action.RECOVER})
    keys: tuple[KeyPattern, ...] = ()  # none: no key
    namespaces: tuple[str, ...] = ()  # shell patterns on namespace names, for unpin; none: no namespace
    rotate_within: timedelta = timedelta(days=7)
    new_key_lifetime: timedelta = timedelta(days=365)
    max_per_hour: int = 10
    cooldown: timedelta = timedelta(hours=1)  # after a failure, the same action on the same target waits

    def key_allowed(self, vault_uri: str, name: str) -> bool:
        """True when a pattern pins this vault's exact host and its key name pattern matches `name`."""
        return any(pattern.matches(vault_uri, name) for pattern in self.keys)

    def namespace_allowed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in self.namespaces)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One thing remediation would do, for whom, why, and (in `blocked`) why it will not."""

    action: Action
    vault: str
    key: str
    reason: str
    namespaces: tuple[str, ...]  # names of the namespaces it helps
    namespace_ids: tuple[str, ...]
    deadline: datetime | None = None  # when the first of them would go Revoked (now, if it has)
    version: str | None = None  # rotate: the current version to move past; unpin: the pinned version
    namespace_id: str | None = None  # unpin: the namespace whose encryption changes
    blocked: str | None = None

    @property
    def key_label(self) -> str:
        return f"{vault_short_name(self.vault)}/{self.key}"

    @property
    def target(self) -> str:
        """What is acted on: the key, or for unpin the namespace and its key."""
        if self.action is Action.UNPIN:
            return f"{self.namespaces[0]} ({self.key_label})"
        return self.key_label

    @property
    def lease_name(self) -> str:
        """One action on one target at a time, across instances."""
        subject = (self.namespace_id or "").lower() if self.action is Action.UNPIN else key_url(self.vault, self.key)
        return f"remediation:{self.action.value}:{subject.lower()}"


@dataclass
class _Gathered:
    vault: str
    key: str
    deadline: datetime | None
    names: dict[str, str] = field(default_factory=dict)  # namespace id -> name
    version: str | None = None


def _gather(found: dict[KeyId, _Gathered], key_id: KeyId, vault: str, key: str, deadline: datetime | None) -> _Gathered:
    entry = found.get(key_id)
    if entry is None:
        entry = found[key_id] = _Gathered(vault, key, deadline)
    elif deadline is not None and (entry.deadline is None or deadline < entry.deadline):
        entry.deadline = deadline
    return entry


def plan(
    reports: Iterable[NamespaceReport], world: World, policy: RemediationPolicy, *, now: datetime
) -> list[Proposal]:
    """Everything remediation would do for these namespaces, each with why, sorted by urgency.

    Rotate: a key that versionless references use, whose current version's expiry revokes a namespace
    within `rotate_within` (or has revoked it). Recover: a soft-deleted key a namespace lists. Unpin:
    a pinned reference whose key's current version is usable. What the monitor could not see is left out.
    """
    rotations: dict[KeyId, _Gathered] = {}
    recoveries: dict[KeyId, _Gathered] = {}
    unpins: list[Proposal] = []
    horizon_limit = now + policy.rotate_within
    for report in reports:
        prediction = report.prediction
        namespace = prediction.namespace
        if prediction.status_now is Status.UNKNOWN:
            continue
        for index, (ref, assessment) in enumerate(zip(namespace.keys, prediction.assessments_now, strict=True)):
            if assessment.unknown:
                continue
            if Reason.KEY_DELETED in assessment.reasons:
                entry = _gather(recoveries, ref.key_id, ref.vault, ref.name, now)
                entry.names[namespace.id] = namespace.name
                continue
            if ref.version is not None:
                unpinned = replace(ref, version=None)
                if assess(world, namespace, unpinned, now).usable:
                    unpins.append(
                        Proposal(
                            Action.UNPIN,
                            ref.vault,
                            ref.name,
                            f"pinned to version {ref.version}, which rotation never replaces; the key's current "
                            "version is usable",
                            (namespace.name,),
                            (namespace.id,),
                            deadline=_pinned_expiry(assessment.version),
                            version=ref.version,
                            namespace_id=namespace.id,
                        )
                    )
                continue
            deadline = _expiry_that_revokes(report, index, world, now, horizon_limit)
            if deadline is not None:
                entry = _gather(rotations, ref.key_id, ref.vault, ref.name, deadline)
                entry.names[namespace.id] = namespace.name
                if assessment.version is not None:
                    entry.version = assessment.version.version
    proposals = [
        _proposal(
            Action.ROTATE,
            entry,
            f"its current version expires at {entry.deadline:%Y-%m-%d %H:%M} UTC and no other listed key covers",
        )
        for entry in rotations.values()
    ]
    proposals += [_proposal(Action.RECOVER, entry, "it is soft-deleted") for entry in recoveries.values()]
    proposals += unpins
    gated = [replace(p, blocked=_blocked(p, policy)) for p in proposals]
    return sorted(gated, key=lambda p: (p.deadline or now, p.action.value, p.target))


def _proposal(action: Action, entry: _Gathered, why: str) -> Proposal:
    names = tuple(sorted(entry.names.values()))
    listed = f"{len(names)} namespace{'s' if len(names) != 1 else ''} list{'s' if len(names) == 1 else ''} it"
    return Proposal(
        action,
        entry.vault,
        entry.key,
        f"{why}; {listed}",
        names,
        tuple(sorted(entry.names)),
        deadline=entry.deadline,
        version=entry.version,
    )


def _pinned_expiry(version: KeyVersion | None) -> datetime | None:
    return version.exp if version is not None else None


def _expiry_that_revokes(
    report: NamespaceReport, index: int, world: World, now: datetime, limit: datetime
) -> datetime | None:
    """When this versionless reference's current version expires and the namespace then has no usable key."""
    prediction = report.prediction
    assessment = prediction.assessments_now[index]
    if not assessment.usable:
        # Already expired (and nothing else wrong): rotation is the fix, if the namespace is revoked for it.
        if set(assessment.reasons) == {Reason.KEY_EXPIRED} and prediction.status_now is Status.REVOKED:
            return now
        return None
    intervals = prediction.usable_intervals[index]
    if not intervals or intervals[0][0] > now:
        return None
    ends = intervals[0][1]
    if ends >= limit or ends >= prediction.horizon:
        return None
    namespace = prediction.namespace
    if Reason.KEY_EXPIRED not in assess(world, namespace, namespace.keys[index], ends).reasons:
        return None
    revokes = any(s.start <= ends < s.end for s in prediction.stretches)
    return ends if revokes else None


def _blocked(proposal: Proposal, policy: RemediationPolicy) -> str | None:
    if policy.mode is Mode.OFF:
        return "remediation is off (KEYHEALTH_REMEDIATION=off)"
    if proposal.action not in policy.actions:
        return f"{proposal.action.value} is not enabled (KEYHEALTH_REMEDIATION_ACTIONS)"
    if proposal.action is Action.UNPIN:
        if proposal.namespace_id is not None and kind_of(proposal.namespace_id) is NamespaceKind.EVENT_HUBS:
            # Its encryption is written through azure-mgmt-eventhub, which remediation does not hold write roles for.
            return (
                f"unpinning is for Service Bus namespaces; unpin Event Hubs namespace {proposal.namespaces[0]} by hand"
            )
        if not policy.namespace_allowed(proposal.namespaces[0]):
            return f"namespace {proposal.namespaces[0]} is not in KEYHEALTH_REMEDIATION_NAMESPACES"
        return None
    if not policy.key_allowed(proposal.vault, proposal.key):
        return f"key {key_url(proposal.vault, proposal.key)} is not in KEYHEALTH_REMEDIATION_KEYS"
    return None


# -- Key Vault rotation policies

_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$",
    re.IGNORECASE,
)


def parse_duration(text: object) -> timedelta | None:
    """An ISO 8601 duration as Key Vault writes them (P90D, P1Y, P2M, PT12H); years 365 days, months 30.

    None for anything else."""
    if not isinstance(text, str):
        return None
    match = _DURATION.match(text.strip())
    if match is None or text.strip().upper() in {"P", "PT"}:
        return None
    parts = {name: int(value) for name, value in match.groupdict().items() if value}
    days = parts.get("years", 0) * 365 + parts.get("months", 0) * 30 + parts.get("weeks", 0) * 7 + parts.get("days", 0)
    return timedelta(
        days=days, hours=parts.get("hours", 0), minutes=parts.get("minutes", 0), seconds=parts.get("seconds", 0)
    )


def policy_rotates_at(policy: Mapping[str, object] | None, current: KeyVersion) -> datetime | None:
    """When the key's rotation policy rotates past `current` on its own (the earliest Rotate trigger), or None."""
    if not policy:
        return None
    actions = policy.get("lifetimeActions") or policy.get("lifetime_actions") or []
    times: list[datetime] = []
    for entry in actions if isinstance(actions, Sequence) else ():
        if not isinstance(entry, Mapping):
            continue
        action = entry.get("action")
        kind = action.get("type") if isinstance(action, Mapping) else action
        if not isinstance(kind, str) or kind.lower() != "rotate":
            continue
        trigger = entry.get("trigger")
        if not isinstance(trigger, Mapping):
            continue
        after_create = parse_duration(trigger.get("timeAfterCreate") or trigger.get("time_after_create"))
        before_expiry = parse_duration(trigger.get("timeBeforeExpiry") or trigger.get("time_before_expiry"))
        if after_create is not None:
            times.append(current.created + after_create)
        if before_expiry is not None and current.exp is not None:
            times.append(current.exp - before_expiry)
    return min(times, default=None)


def policy_expiry(policy: Mapping[str, object] | None) -> timedelta | None:
    """The lifetime the policy gives new versions (attributes.expiryTime), or None."""
    if not policy:
        return None
    attributes = policy.get("attributes")
    if isinstance(attributes, Mapping):
        return parse_duration(attributes.get("expiryTime") or attributes.get("expiry_time"))
    return parse_duration(policy.get("expires_in"))


def version_fit(version: KeyVersion, *, now: datetime, lasts_until: datetime) -> str | None:
    """None when a freshly made version can serve (enabled, valid now, wrapKey and unwrapKey allowed, not
    expiring before `lasts_until`); else what is wrong with it."""
    if not version.enabled:
        return "it is disabled"
    if version.nbf is not None and version.nbf > now:
        return f"it is not valid before {version.nbf:%Y-%m-%d %H:%M} UTC"
    if version.key_ops is not None and not {"wrapKey", "unwrapKey"} <= set(version.key_ops):
        return f"its key_ops [{', '.join(version.key_ops)}] lack wrapKey or unwrapKey"
    if version.exp is not None and version.exp <= lasts_until:
        return f"it expires at {version.exp:%Y-%m-%d %H:%M} UTC, within the rotation threshold"
    return None
