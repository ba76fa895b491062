"""Microsoft Teams sink: an Adaptive Card posted to a Workflows ("Send webhook alerts to a channel")
or incoming-webhook URL, wrapped as a message with one card attachment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitor.adapters.alerts.common import facts, is_urgent, remedies, unusable_keys
from monitor.adapters.alerts.http import JsonWebhookSink
from monitor.domain.alert import Alert

CARD_VERSION = "1.4"  # what Teams renders on every client, webhooks and Workflows included
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def adaptive_card(alert: Alert, now: datetime) -> dict[str, Any]:
    """The card: headline, facts, unusable keys with why, what to do, and a button to the portal."""
    colour = "Good" if alert.resolved else ("Attention" if is_urgent(alert) else "Warning")
    body: list[dict[str, Any]] = [
        _text(alert.headline(now), size="Medium", weight="Bolder", color=colour),
        {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in facts(alert, alert.window(now))]},
    ]
    broken = unusable_keys(alert)
    if broken:
        body.append(_text("Unusable keys", weight="Bolder", spacing="Medium"))
        body.extend(_text(line, spacing="Small") for line in broken)
    steps = remedies(alert)
    if steps and not alert.resolved:
        body.append(_text("What to do", weight="Bolder", spacing="Medium"))
        body.extend(_text(step, spacing="Small", fontType="Monospace") for step in steps)
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    if alert.portal_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in the Azure portal", "url": alert.portal_url}]
    return card


def teams_message(alert: Alert, now: datetime) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": adaptive_card(alert, now)}],
    }


class TeamsSink(JsonWebhookSink):
    kind = "teams"

    def message(self, alert: Alert, now: datetime) -> dict[str, Any]:
        return teams_message(alert, now)
