"""Fleet reports as the spec's prediction JSON, and as a table for people."""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

from monitor.domain.documents import format_instant
from monitor.domain.findings import Code, Finding, Severity, humanize
from monitor.domain.fleet import FleetReport, NamespaceReport
from monitor.domain.observed import NamespaceObservation
from monitor.domain.prediction import Status


def _instant(t: datetime | None) -> str | None:
    return None if t is None else format_instant(t)


def finding_document(finding: Finding) -> dict[str, object]:
    document: dict[str, object] = {
        "code": finding.code.value,
        "severity": finding.severity.label,
        "key": finding.key,
        "message": finding.message,
    }
    if finding.version is not None:
        document["version"] = finding.version
    if finding.at is not None:
        document["at"] = format_instant(finding.at)
    return document


def namespace_document(report: NamespaceReport) -> dict[str, object]:
    prediction = report.prediction
    return {
        "name": prediction.namespace.name,
        "id": prediction.namespace.id,
        "kind": prediction.namespace.kind.value,  # an extra: servicebus or eventhubs
        "status_now": prediction.status_now.value,
        "usable_keys_now": prediction.usable_keys_now,
        "keys_total": prediction.keys_total,
        "revoked_at_earliest": _instant(prediction.revoked_at_earliest),
        "revoked_by": _instant(prediction.revoked_by),
        "findings": [finding_document(f) for f in report.findings],
        # Extras beyond the spec: every stretch without a usable key, and each reference now.
        "unusable_stretches": [
            {
                "start": format_instant(s.start),
                "end": format_instant(s.end),
                "open_ended": s.open_ended,
                "certain": s.certain,
            }
            for s in prediction.stretches
        ],
        "keys": [
            {
                "key": a.ref.url,
                "version": a.ref.version,
                "identity": a.ref.identity,
                "usable_now": a.usable,
                "reasons_now": [r.value for r in a.reasons],
            }
            for a in prediction.assessments_now
        ],
        "require_infrastructure_encryption": prediction.namespace.infrastructure_encryption,
        **({"geo_dr": geo_dr_document(report)} if prediction.namespace.geo_dr is not None else {}),
        **(observed_fields(report) if prediction.namespace.observed is not None else {}),
    }


def observed_fields(report: NamespaceReport) -> dict[str, object]:
    """`revoked_at`, the service's own poll that would revoke the namespace (to the second, once its phase is
    known; null otherwise), and `observed`: what its key accesses showed. Extras beyond the spec: the spec's
    window keeps its meaning."""
    prediction = report.prediction
    observation = prediction.observation
    assert observation is not None  # noqa: S101 - narrows the type; callers ask only of an observed namespace
    return {
        "revoked_at": _instant(prediction.revoked_at),
        "observed": observed_document(report, observation),
    }


def observed_document(report: NamespaceReport, observation: NamespaceObservation) -> dict[str, object]:
    if not observation.known:
        return {"status": "unknown", "reason": observation.unobserved}
    phase = observation.phase
    return {
        "status": "observed",
        "polls_seen": observation.polls_seen,
        "phase_seconds": phase.seconds if phase is not None else None,
        "phase_polls": phase.polls if phase is not None else 0,
        "phase_known": phase is not None and phase.known,
        "next_poll_at": _instant(phase.next_poll(report.prediction.now)) if phase is not None and phase.known else None,
        "keys": [
            {
                "key": key.key,
                "last_success": _instant(key.last_success),
                "last_failure": _instant(key.last_failure),
                "last_status": key.last_status,
                "dropped": key.dropped,
            }
            for key in observation.keys
        ],
    }


def geo_dr_document(report: NamespaceReport) -> dict[str, object]:
    """The namespace's Geo-DR pairing and what a failover would do to its partner (from the findings)."""
    pairing = report.prediction.namespace.geo_dr
    assert pairing is not None  # noqa: S101 - narrows the type; callers ask only of a paired namespace
    codes = {f.code: f.severity for f in report.findings}
    if not pairing.is_primary:
        failover = "judged-on-primary"
    elif Code.GEO_DR_PARTNER_UNKNOWN in codes:
        failover = "unknown"
    elif codes.get(Code.GEO_DR_PARTNER_CANNOT_USE_KEY) is Severity.CRITICAL:
        failover = "would-revoke-partner"
    elif Code.GEO_DR_PARTNER_CANNOT_USE_KEY in codes:
        failover = "partner-loses-redundancy"
    else:
        failover = "partner-can-use-keys"
    return {
        "alias": pairing.alias,
        "role": pairing.role,
        "partner": pairing.partner,
        "partner_name": pairing.partner_name,
        "failover": failover,
    }


def prediction_document(report: FleetReport) -> dict[str, object]:
    """The prediction output of the scenario format (`keyhealth simulate --format json`)."""
    document: dict[str, object] = {
        "now": format_instant(report.now),
        "horizon": format_instant(report.horizon),
        "namespaces": [namespace_document(n) for n in report.namespaces],
    }
    if report.blind:  # an extra: what the monitor could not read (live checks only)
        document["blind"] = [{"scope": b.scope.value, "target": b.target, "reason": b.reason} for b in report.blind]
    return document


_FAILOVER_WORDS = {
    "judged-on-primary": "its primary's check judges the failover",
    "unknown": "whether a failover would revoke {partner} is unknown (partner not readable)",
    "would-revoke-partner": "failover would revoke {partner}",
    "partner-loses-redundancy": "after a failover {partner} could use only some of the keys",
    "partner-can-use-keys": "{partner} can use the keys after a failover",
}


def failover_words(pair: dict[str, object]) -> str:
    """What a failover would do, in words, from a `geo_dr_document`."""
    return _FAILOVER_WORDS[str(pair["failover"])].format(partner=pair["partner_name"])


_RESET = "\033[0m"
_COLOURS = {
    Status.REVOKED: "\033[1;31m",
    Status.DEGRADED: "\033[33m",
    Status.HEALTHY: "\033[32m",
    Status.UNKNOWN: "\033[35m",
    Severity.CRITICAL: "\033[1;31m",
    Severity.WARNING: "\033[33m",
    Severity.INFO: "\033[36m",
}


def _paint(text: str, tone: Status | Severity | None, colour: bool) -> str:
    if not colour or tone is None:
        return text
    return f"{_COLOURS[tone]}{text}{_RESET}"


def _window(report: NamespaceReport) -> str:
    prediction = report.prediction
    earliest = prediction.revoked_at_earliest
    if earliest is None:
        return "none before horizon"
    by = prediction.revoked_by
    span = f"{format_instant(earliest)} .. {format_instant(by)}" if by else f"{format_instant(earliest)} (possible)"
    return f"{span} {humanize(earliest - prediction.now)}"


def render_table(report: FleetReport, *, colour: bool = False, width: int = 100) -> str:
    """One row a namespace (status, usable keys, revocation window, top finding), then the details."""
    headers = ("NAMESPACE", "STATUS", "USABLE", "REVOCATION WINDOW", "TOP FINDING")
    rows = []
    for namespace in report.namespaces:
        prediction = namespace.prediction
        top = namespace.findings[0] if namespace.findings else None
        rows.append(
            (
                (prediction.namespace.name, None),
                (prediction.status_now.value, prediction.status_now),
                (f"{prediction.usable_keys_now}/{prediction.keys_total}", None),
                (_window(namespace), None),
                (f"{top.severity.label} {top.code.value}" if top else "-", top.severity if top else None),
            )
        )
    widths = [max([len(h)] + [len(row[i][0]) for row in rows]) for i, h in enumerate(headers)]
    lines = [f"keyhealth prediction at {format_instant(report.now)}, horizon {format_instant(report.horizon)}"]
    for spot in report.fleet_blind:
        where = "subscriptions" if spot.target == "*" else f"subscription {spot.target}"
        lines.append(_paint(f"BLIND: could not list {where}: {spot.reason}", Severity.CRITICAL, colour))
    lines += [
        "",
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
    ]
    for row in rows:
        cells = [_paint(text.ljust(w), tone, colour) for (text, tone), w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    details = [
        (namespace, finding)
        for namespace in report.namespaces
        for finding in namespace.findings
        if finding.severity >= Severity.WARNING
    ]
    if details:
        lines += ["", "Findings (warning and above):"]
        for namespace, finding in details:
            where = namespace.prediction.namespace.name
            if finding.key is not None:
                where += f" {finding.key}"
            head = f"{finding.severity.label.upper()} {finding.code.value} [{where}]"
            lines.append("- " + _paint(head, finding.severity, colour))
            lines.extend(
                textwrap.wrap(
                    finding.message,
                    width=max(width - 4, 40),
                    initial_indent="    ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
    paired = [n for n in report.namespaces if n.prediction.namespace.geo_dr is not None]
    if paired:
        lines += ["", "Geo-DR pairs:"]
        for namespace in paired:
            pair = geo_dr_document(namespace)
            outcome = failover_words(pair)
            lines.extend(
                textwrap.wrap(
                    f"- {namespace.prediction.namespace.name} ({str(pair['role']).replace('_', ' ')}) paired with "
                    f"{pair['partner_name']}, alias {pair['alias']}: {outcome}",
                    width=max(width, 40),
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
    info = sum(1 for n in report.namespaces for f in n.findings if f.severity is Severity.INFO)
    if info:
        lines += ["", f"{info} info finding(s) not shown; --format json lists every finding."]
    return "\n".join(lines) + "\n"


def render_metrics(data: Any) -> str:
    """One line per series of the metrics an exporter would receive: `name{attributes} value`."""
    lines = ["\nMetrics (as an exporter receives them):"]
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in sorted(scope.metrics, key=lambda m: m.name):
                for point in metric.data.data_points:
                    labels = ",".join(f"{k}={v}" for k, v in sorted((point.attributes or {}).items()))
                    value = getattr(point, "value", None)
                    if value is None:  # a histogram: its count and sum
                        value = f"count={point.count} sum={point.sum:.3f}"
                    lines.append(f"  {metric.name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"
