"""PagerDuty sink: Events API v2. Opens, escalations and re-notifications trigger, a resolve resolves;
all with the incident's stable dedup_key, so PagerDuty keeps one alert per incident."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from monitor.adapters.alerts.common import remedies, unusable_keys
from monitor.adapters.alerts.http import HttpPoster
from monitor.domain.alert import Alert
from monitor.domain.documents import format_instant
from monitor.domain.incidents import Level, Notice

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SUMMARY = 1024  # PagerDuty truncates a longer summary
_SEVERITY = {Level.WARNING: "warning", Level.CRITICAL: "critical", Level.REVOKED: "critical"}


def pagerduty_event(alert: Alert, routing_key: str, now: datetime) -> dict[str, Any] | None:
    """The Events API v2 event for `alert`; None for what PagerDuty should not hear (remediation that
    worked, or a dry run: PagerDuty is for what needs a person)."""
    if alert.action is not None:
        if alert.action.outcome != "failed":
            return None
        return {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": f"keyhealth:remediation:{alert.action.action}:{alert.action.target}"[:255],
            "payload": {
                "summary": alert.headline(now)[:_SUMMARY],
                "source": f"{alert.namespace_name}.servicebus.windows.net",
                "severity": "error",
                "timestamp": format_instant(alert.evaluated_at),
                "component": alert.namespace_name,
                "class": "remediation",
                "custom_details": {"action": alert.action.action, "target": alert.action.target},
            },
            "client": "keyhealth",
        }
    if alert.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.dedup_key}
    summary = alert.headline(now)
    watchdog = alert.notice is Notice.WATCHDOG
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.dedup_key,
        "payload": {
            "summary": summary if len(summary) <= _SUMMARY else summary[: _SUMMARY - 1] + "…",
            "source": "keyhealth" if watchdog else f"{alert.namespace_name}.servicebus.windows.net",
            "severity": "info" if watchdog else _SEVERITY[alert.level],
            "timestamp": format_instant(alert.evaluated_at),
            "component": alert.namespace_name,
            "group": alert.namespace_id.rstrip("/").rsplit("/providers/", 1)[0],
            "class": alert.condition.value,
            "custom_details": {
                "level": alert.level.label,
                "notice": alert.notice.value,
                "status_now": alert.status_now,
                "usable_keys": alert.redundancy,
                "revocation_window": alert.window(now),
                "unusable_keys": unusable_keys(alert),
                "what_to_do": remedies(alert),
                "namespace_id": alert.namespace_id,
            },
        },
        "client": "keyhealth",
    }
    if alert.portal_url:
        event["client_url"] = alert.portal_url
        event["links"] = [{"href": alert.portal_url, "text": f"{alert.namespace_name} in the Azure portal"}]
    return event


class PagerDutySink:
    kind = "pagerduty"

    def __init__(
        self, name: str, routing_key: str, poster: HttpPoster, *, url: str = EVENTS_URL, timeout: float = 10.0
    ):
        self.name = name
        self._routing_key = routing_key
        self._url = url
        self._poster = poster
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"PagerDutySink(name={self.name!r})"  # never the routing key

    async def send(self, alert: Alert, *, now: datetime) -> None:
        event = pagerduty_event(alert, self._routing_key, now)
        if event is None:
            return
        body = json.dumps(event, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        await self._poster.post(
            self.name, self._url, body, headers, timeout=self._timeout, secrets=(self._routing_key,)
        )

    async def close(self) -> None:
        """The shared poster is closed by whoever made it."""
