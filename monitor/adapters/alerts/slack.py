"""Slack sink: an incoming webhook message in Block Kit, with `text` as the notification fallback."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitor.adapters.alerts.common import facts, remedies, unusable_keys
from monitor.adapters.alerts.http import JsonWebhookSink
from monitor.domain.alert import Alert

# Block Kit limits: a header's plain text 150 characters, a section's text 3000, a field 2000, 10 fields.
_HEADER, _SECTION, _FIELD, _FIELDS = 150, 3000, 2000, 10


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert, now: datetime) -> dict[str, Any]:
    headline = alert.headline(now)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(headline, _HEADER), "emoji": False}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _clip(f"*{_escape(t)}*\n{_escape(v)}", _FIELD)}
                for t, v in facts(alert, alert.window(now))[:_FIELDS]
            ],
        },
    ]
    broken = unusable_keys(alert)
    if broken:
        text = "*Unusable keys*\n" + "\n".join(f"• {_escape(line)}" for line in broken)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, _SECTION)}})
    steps = remedies(alert)
    if steps and not alert.resolved:
        text = "*What to do*\n" + "\n".join(f"• {_escape(step)}" for step in steps)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, _SECTION)}})
    if alert.portal_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in the Azure portal"},
                        "url": alert.portal_url,
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _escape(f"keyhealth · {alert.dedup_key} · alert {alert.id}")}],
        }
    )
    return {"text": headline, "blocks": blocks}


class SlackSink(JsonWebhookSink):
    kind = "slack"

    def message(self, alert: Alert, now: datetime) -> dict[str, Any]:
        return slack_message(alert, now)
