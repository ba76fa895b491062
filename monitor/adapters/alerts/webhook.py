"""Generic webhook sink: the alert's JSON document, signed with HMAC-SHA256 when a secret is set.

Headers: X-KeyHealth-Delivery (the alert id, the same on every retry: drop repeats by it),
X-KeyHealth-Notice (open, escalate, renotify, resolve) and, with a secret,
X-KeyHealth-Signature-256: "sha256=" + hex HMAC-SHA256 of the exact body bytes under the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime

from monitor.adapters.alerts.http import HttpPoster
from monitor.domain.alert import Alert
from monitor.domain.documents import format_instant

SIGNATURE_HEADER = "X-KeyHealth-Signature-256"


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_body(alert: Alert, now: datetime) -> dict[str, object]:
    """The alert document, plus the wording as of sending: headline and revocation window."""
    return {
        **alert.document(),
        "headline": alert.headline(now),
        "window": alert.window(now),
        "sent_at": format_instant(now),
    }


class WebhookSink:
    """POSTs application/json to one URL."""

    kind = "webhook"

    def __init__(self, name: str, url: str, poster: HttpPoster, *, secret: str | None = None, timeout: float = 10.0):
        self.name = name
        self._url = url
        self._secret = secret
        self._poster = poster
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r})"  # never the URL or the secret

    async def send(self, alert: Alert, *, now: datetime) -> None:
        body = json.dumps(webhook_body(alert, now), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-KeyHealth-Delivery": alert.id,
            "X-KeyHealth-Notice": alert.notice.value,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        await self._poster.post(self.name, self._url, body, headers, timeout=self._timeout, secrets=(self._secret,))

    async def close(self) -> None:
        """The shared poster is closed by whoever made it."""
