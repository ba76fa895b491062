"""An alert: what one incident notice tells a person (or automation), and its JSON document.

Every sink renders the same Alert. Relative times ("in 6 days 4 hours") are worked out when a sink
sends it, from the absolute ones, so a page delivered late still says the truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from monitor.domain.documents import format_instant, parse_instant
from monitor.domain.findings import Finding, humanize
from monitor.domain.fleet import NamespaceReport
from monitor.domain.incidents import Condition, Level, Notice
from monitor.domain.model import KeyId, NamespaceKind, kind_of
from monitor.domain.prediction import Status

SCHEMA = "keyhealth.alert/1"
_DEDUP_KEY_LIMIT = 255  # PagerDuty's limit on dedup_key


@dataclass(frozen=True, slots=True)
class AlertKey:
    """One listed key reference as the alert's evaluation saw it."""

    key: str
    version: str | None
    identity: str | None
    usable_now: bool
    reasons_now: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertFinding:
    """One finding, with its remedy in `message`."""

    code: str
    severity: str
    key: str | None
    message: str
    version: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AlertAction:
    """What remediation did (outcome done), would do (dry-run) or could not do (failed)."""

    action: str  # rotate, recover, unpin
    outcome: str  # done, dry-run, failed
    target: str
    detail: str


@dataclass(frozen=True, slots=True)
class Alert:
    """One notice about one incident (namespace, condition)."""

    id: str  # the same for every sink the notice goes to; receivers can drop repeats by it
    notice: Notice
    condition: Condition
    level: Level  # for a resolve, the level it had
    previous_level: Level | None
    incident_number: int
    opened_at: datetime
    namespace_id: str
    namespace_name: str
    portal_url: str
    status_now: str
    usable_keys_now: int
    keys_total: int
    revoked_at_earliest: datetime | None
    revoked_by: datetime | None
    revocation_certain: bool | None
    keys: tuple[AlertKey, ...]
    findings: tuple[AlertFinding, ...]
    evaluated_at: datetime
    namespace_tags: Mapping[str, str] = field(default_factory=dict)
    test: bool = False  # sent by `keyhealth alerts test`: about no real namespace
    action: AlertAction | None = None  # with notice ACTION: what remediation did

    @property
    def resolved(self) -> bool:
        return self.notice is Notice.RESOLVE

    @property
    def dedup_key(self) -> str:
        """Stable for the life of the incident (PagerDuty dedup_key, Event Grid subject suffix)."""
        key = f"keyhealth:{self.condition.value}:{self.namespace_id.strip().rstrip('/').lower()}"
        if len(key) <= _DEDUP_KEY_LIMIT:
            return key
        return f"keyhealth:{self.condition.value}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"

    @property
    def redundancy(self) -> str:
        return f"{self.usable_keys_now} of {self.keys_total} listed keys usable"

    def window(self, now: datetime) -> str | None:
        """The predicted revocation window in UTC and relative to `now`, or None when none is predicted."""
        if self.revoked_at_earliest is None:
            return None
        start = format_instant(self.revoked_at_earliest)
        if self.revoked_by is not None and self.revoked_by != self.revoked_at_earliest:
            span = f"{start} … {format_instant(self.revoked_by)}"
        else:
            span = start
        return f"{span} ({humanize(self.revoked_at_earliest - now)})"

    def headline(self, now: datetime) -> str:
        """One line for a page title: level, namespace, what is happening, and when."""
        text = self._headline(now)
        return f"[TEST] {text}" if self.test else text

    def _headline(self, now: datetime) -> str:
        name = self.namespace_name
        if kind_of(self.namespace_id) is NamespaceKind.EVENT_HUBS:  # Service Bus is the default, and unnamed
            name += " (Event Hubs)"
        if self.notice is Notice.WATCHDOG:
            return (
                f"[WATCHDOG] keyhealth is polling: {self.keys_total} namespaces judged at "
                f"{format_instant(self.evaluated_at)} (always firing: its silence means the monitor is down)"
            )
        if self.action is not None:
            tag = {"done": "[ACTION]", "dry-run": "[DRY RUN]"}.get(self.action.outcome, "[ACTION FAILED]")
            return f"{tag} {self.action.detail}"
        if self.resolved:
            if self.status_now == "removed":
                return f"[RESOLVED] {name}: no longer in the fleet (deleted, or no longer on a customer-managed key)"
            return f"[RESOLVED] {name}: {self.condition.value} cleared; {self.redundancy}"
        tag = f"[{self.level.label.upper()}]"
        if self.notice is Notice.ESCALATE and self.previous_level is not None:
            tag += f" (was {self.previous_level.label})"
        elif self.notice is Notice.RENOTIFY:
            tag += " (still)"
        if self.condition is Condition.REVOCATION:
            if self.level is Level.REVOKED:
                entities = (
                    "event hubs are"
                    if kind_of(self.namespace_id) is NamespaceKind.EVENT_HUBS
                    else "queues and topics are"
                )
                what = f"REVOKED: no listed key is usable; its {entities} inaccessible"
            elif self.revoked_at_earliest is not None:
                certain = "would go Revoked" if self.revocation_certain else "may go Revoked"
                what = f"{certain} {humanize(self.revoked_at_earliest - now)}"
            else:
                what = "is heading for Revoked"
        elif self.condition is Condition.REDUNDANCY:
            what = f"{self.redundancy}; one more failure from Revoked"
        elif self.condition is Condition.FAILOVER:
            # Each geo-dr finding's message starts with what a failover would do: "failover would revoke …".
            worst = self.findings[0].message.split(" (Geo-DR", 1)[0] if self.findings else "Geo-DR partner at risk"
            what = f"Geo-DR: {worst}"
        elif self.condition is Condition.SERVICE:
            service = kind_of(self.namespace_id).service
            failing = [f for f in self.findings if f.code == "service-access-failing"]
            chief = failing[0] if failing else (self.findings[0] if self.findings else None)
            key = (chief.key or "a listed key").rstrip("/").rsplit("/", 1)[-1] if chief else "a listed key"
            if failing:
                what = f"{service}'s own calls on key {key} fail (the vault's audit log)"
            else:
                what = f"{service} dropped key {key} from its record: a usable key it no longer uses"
        elif self.condition is Condition.CONFIGURATION:
            codes = ", ".join(sorted({f.code for f in self.findings}))
            what = f"key configuration puts its data at risk ({codes})"
        else:
            what = "keyhealth cannot read what decides its keys; status " + self.status_now
        return f"{tag} {name} {what}"

    def document(self) -> dict[str, Any]:
        """JSON-ready: the generic webhook's body, the Event Grid event's data, the outbox's record."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "notice": self.notice.value,
            "condition": self.condition.value,
            "level": self.level.label,
            "previous_level": None if self.previous_level is None else self.previous_level.label,
            "resolved": self.resolved,
            "test": self.test,
            "incident": {
                "dedup_key": self.dedup_key,
                "number": self.incident_number,
                "opened_at": format_instant(self.opened_at),
            },
            "namespace": {
                "id": self.namespace_id,
                "name": self.namespace_name,
                "kind": kind_of(self.namespace_id).value,
                "portal_url": self.portal_url,
                "tags": dict(self.namespace_tags),
            },
            "status_now": self.status_now,
            "usable_keys_now": self.usable_keys_now,
            "keys_total": self.keys_total,
            "revoked_at_earliest": _instant(self.revoked_at_earliest),
            "revoked_by": _instant(self.revoked_by),
            "revocation_certain": self.revocation_certain,
            "keys": [
                {
                    "key": k.key,
                    "version": k.version,
                    "identity": k.identity,
                    "usable_now": k.usable_now,
                    "reasons_now": list(k.reasons_now),
                    "tags": dict(k.tags),
                }
                for k in self.keys
            ],
            "findings": [
                {
                    "code": f.code,
                    "severity": f.severity,
                    "key": f.key,
                    "message": f.message,
                    "version": f.version,
                    "at": _instant(f.at),
                }
                for f in self.findings
            ],
            "evaluated_at": format_instant(self.evaluated_at),
            "action": None
            if self.action is None
            else {
                "action": self.action.action,
                "outcome": self.action.outcome,
                "target": self.action.target,
                "detail": self.action.detail,
            },
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Alert:
        """The alert `document()` wrote. Raises ValueError (or KeyError, TypeError) for anything else."""
        if document.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document: schema {document.get('schema')!r}")
        incident = document["incident"]
        namespace = document["namespace"]
        previous = document.get("previous_level")
        return cls(
            id=str(document["id"]),
            notice=Notice(document["notice"]),
            condition=Condition(document["condition"]),
            level=Level.parse(str(document["level"])),
            previous_level=None if previous is None else Level.parse(str(previous)),
            incident_number=int(incident["number"]),
            opened_at=parse_instant(incident["opened_at"], "$.incident.opened_at"),
            namespace_id=str(namespace["id"]),
            namespace_name=str(namespace["name"]),
            portal_url=str(namespace["portal_url"]),
            namespace_tags={str(k): str(v) for k, v in (namespace.get("tags") or {}).items()},
            status_now=str(document["status_now"]),
            usable_keys_now=int(document["usable_keys_now"]),
            keys_total=int(document["keys_total"]),
            revoked_at_earliest=_parsed(document.get("revoked_at_earliest")),
            revoked_by=_parsed(document.get("revoked_by")),
            revocation_certain=document.get("revocation_certain"),
            keys=tuple(
                AlertKey(
                    key=str(k["key"]),
                    version=k.get("version"),
                    identity=k.get("identity"),
                    usable_now=bool(k["usable_now"]),
                    reasons_now=tuple(str(r) for r in k.get("reasons_now") or ()),
                    tags={str(t): str(v) for t, v in (k.get("tags") or {}).items()},
                )
                for k in document.get("keys") or ()
            ),
            findings=tuple(
                AlertFinding(
                    code=str(f["code"]),
                    severity=str(f["severity"]),
                    key=f.get("key"),
                    message=str(f["message"]),
                    version=f.get("version"),
                    at=_parsed(f.get("at")),
                )
                for f in document.get("findings") or ()
            ),
            evaluated_at=parse_instant(document["evaluated_at"], "$.evaluated_at"),
            test=bool(document.get("test", False)),
            action=None
            if not document.get("action")
            else AlertAction(
                action=str(document["action"]["action"]),
                outcome=str(document["action"]["outcome"]),
                target=str(document["action"]["target"]),
                detail=str(document["action"]["detail"]),
            ),
        )


def _instant(t: datetime | None) -> str | None:
    return None if t is None else format_instant(t)


def _parsed(text: object) -> datetime | None:
    return None if text is None else parse_instant(text, "alert time")


def portal_url(portal: str, resource_id: str) -> str:
    """The Azure portal page of an ARM resource (`portal` differs in sovereign clouds)."""
    return f"{portal.rstrip('/')}/#resource{resource_id.rstrip('/')}/overview"


def _finding(finding: Finding) -> AlertFinding:
    return AlertFinding(
        code=finding.code.value,
        severity=finding.severity.label,
        key=finding.key,
        message=finding.message,
        version=finding.version,
        at=finding.at,
    )


@dataclass(frozen=True, slots=True)
class NoticeContext:
    """Which incident a notice is about, and what it says of it."""

    id: str
    notice: Notice
    condition: Condition
    level: Level
    previous_level: Level | None
    incident_number: int
    opened_at: datetime

    def alert_fields(self) -> dict[str, Any]:
        """The Alert fields this context decides."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def alert_for(
    report: NamespaceReport,
    context: NoticeContext,
    *,
    findings: Sequence[Finding],
    key_tags: Mapping[KeyId, Mapping[str, str]],
    portal: str,
    now: datetime,
) -> Alert:
    """The alert for one notice about a judged namespace, with each listed key's tags from `key_tags`."""
    prediction = report.prediction
    namespace = prediction.namespace
    first = prediction.stretches[0] if prediction.stretches else None
    return Alert(
        **context.alert_fields(),
        namespace_id=namespace.id,
        namespace_name=namespace.name,
        portal_url=portal_url(portal, namespace.id),
        namespace_tags=dict(namespace.tags),
        status_now=prediction.status_now.value,
        usable_keys_now=prediction.usable_keys_now,
        keys_total=prediction.keys_total,
        revoked_at_earliest=prediction.revoked_at_earliest,
        revoked_by=prediction.revoked_by,
        revocation_certain=None if first is None else (first.certain or prediction.status_now is Status.REVOKED),
        keys=tuple(
            AlertKey(
                key=a.ref.url,
                version=a.ref.version,
                identity=a.ref.identity,
                usable_now=a.usable,
                reasons_now=tuple(r.value for r in a.reasons),
                tags=dict(key_tags.get(a.ref.key_id, {})),
            )
            for a in prediction.assessments_now
        ),
        findings=tuple(_finding(f) for f in findings),
        evaluated_at=now,
    )


WATCHDOG_ID = "keyhealth/watchdog"  # the watchdog's "namespace": stable, so receivers deduplicate it


def watchdog_alert(*, id: str, namespaces: int, portal: str, now: datetime) -> Alert:
    """A watchdog notice (its id made by the caller), after a complete poll that judged `namespaces` namespaces."""
    return Alert(
        id=id,
        notice=Notice.WATCHDOG,
        condition=Condition.WATCHDOG,
        level=Level.WARNING,  # the lowest level; sinks send it as information (PagerDuty severity info)
        previous_level=None,
        incident_number=0,
        opened_at=now,
        namespace_id=WATCHDOG_ID,
        namespace_name="keyhealth",
        portal_url=portal,
        status_now="polling",
        usable_keys_now=0,
        keys_total=namespaces,
        revoked_at_earliest=None,
        revoked_by=None,
        revocation_certain=None,
        keys=(),
        findings=(),
        evaluated_at=now,
    )


def alert_for_removed(context: NoticeContext, namespace_id: str, *, now: datetime) -> Alert:
    """The resolve of an incident whose namespace left the fleet (deleted, or no longer on a customer key)."""
    return Alert(
        **context.alert_fields(),
        namespace_id=namespace_id,
        namespace_name=namespace_id.rstrip("/").rsplit("/", 1)[-1],
        portal_url="",
        status_now="removed",
        usable_keys_now=0,
        keys_total=0,
        revoked_at_earliest=None,
        revoked_by=None,
        revocation_certain=None,
        keys=(),
        findings=(),
        evaluated_at=now,
    )


def sample_alert(now: datetime, *, portal: str = "https://portal.azure.com", notice: Notice = Notice.OPEN) -> Alert:
    """A realistic alert about no real namespace (marked `test`), for checking a sink's wiring."""
    namespace_id = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-keyhealth-test/providers/"
        "Microsoft.ServiceBus/namespaces/sb-keyhealth-test"
    )
    key = "https://kv-keyhealth-test.vault.azure.net/keys/sb-cmk"
    earliest = now + timedelta(days=6, hours=4)
    return Alert(
        id=f"test-{now.strftime('%Y%m%dT%H%M%S.%fZ')}",
        notice=notice,
        condition=Condition.REVOCATION,
        level=Level.CRITICAL,
        previous_level=None,
        incident_number=1,
        opened_at=now,
        namespace_id=namespace_id,
        namespace_name="sb-keyhealth-test",
        portal_url=portal_url(portal, namespace_id),
        namespace_tags={"owner": "keyhealth-test"},
        status_now="healthy",
        usable_keys_now=1,
        keys_total=1,
        revoked_at_earliest=earliest,
        revoked_by=earliest + timedelta(minutes=5),
        revocation_certain=True,
        keys=(AlertKey(key=key, version=None, identity=None, usable_now=True, reasons_now=()),),
        findings=(
            AlertFinding(
                code="key-expiring",
                severity="critical",
                key=key,
                message=(
                    "TEST ALERT from `keyhealth alerts test`: key sb-cmk expires and no other listed key is usable "
                    "then: az keyvault key rotate --vault-name kv-keyhealth-test --name sb-cmk"
                ),
                at=earliest,
            ),
        ),
        evaluated_at=now,
        test=True,
    )
