"""Wording shared by the chat and paging sinks: what is wrong with which key, and what to do."""

from __future__ import annotations

from monitor.domain.alert import Alert
from monitor.domain.incidents import Level

MAX_REMEDIES = 8  # a page is read on a phone at 3 a.m.: the worst few, the full list is in the JSON


def unusable_keys(alert: Alert) -> list[str]:
    """One line per listed key that is not usable now, with why."""
    return [
        f"{k.key}{' (version ' + k.version + ')' if k.version else ''}: {', '.join(k.reasons_now) or 'unknown'}"
        for k in alert.keys
        if not k.usable_now
    ]


def remedies(alert: Alert) -> list[str]:
    """The findings' messages, worst first (each says what to do, with the command filled in)."""
    return [f"{f.severity.upper()} {f.code}: {f.message}" for f in alert.findings[:MAX_REMEDIES]]


def facts(alert: Alert, now_window: str | None) -> list[tuple[str, str]]:
    """(label, value) pairs for a card: the namespace, level, status, window, redundancy."""
    level = "resolved" if alert.resolved else alert.level.label
    pairs = [
        ("Namespace", alert.namespace_name),
        ("Condition", alert.condition.value),
        (
            "Level",
            level + (f" (was {alert.previous_level.label})" if alert.previous_level and not alert.resolved else ""),
        ),
        ("Status now", alert.status_now),
        ("Usable keys", alert.redundancy),
    ]
    if now_window is not None:
        pairs.append(("Revocation window (UTC)", now_window))
    pairs.append(("Incident", f"#{alert.incident_number}, opened {alert.opened_at.strftime('%Y-%m-%d %H:%M UTC')}"))
    return pairs


def is_urgent(alert: Alert) -> bool:
    return not alert.resolved and alert.level >= Level.CRITICAL
