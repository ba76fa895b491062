"""Azure Event Grid sink: CloudEvents on a custom topic, so automation can subscribe to what keyhealth sees.

Types: KeyHealth.NamespaceAtRisk (an incident opened, escalated or re-notified, short of Revoked),
KeyHealth.NamespaceRevoked (level revoked), KeyHealth.NamespaceRecovered (resolved); and for remediation
KeyHealth.RemediationPerformed, KeyHealth.RemediationPlanned (a dry run), KeyHealth.RemediationFailed.
The subject is the namespace's ARM id (subscriptions filter by prefix); the data is the alert document;
the event id is the alert id, the same on every retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core.credentials import AzureKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid.aio import EventGridPublisherClient

from monitor.adapters.alerts.http import scrub
from monitor.adapters.azure_clients import describe_failure
from monitor.domain.alert import Alert
from monitor.domain.errors import DeliveryError
from monitor.domain.incidents import Level, Notice

SOURCE = "keyhealth"
AT_RISK, REVOKED, RECOVERED = "KeyHealth.NamespaceAtRisk", "KeyHealth.NamespaceRevoked", "KeyHealth.NamespaceRecovered"
WATCHDOG = "KeyHealth.Watchdog"


REMEDIATION = {
    "done": "KeyHealth.RemediationPerformed",
    "dry-run": "KeyHealth.RemediationPlanned",
    "failed": "KeyHealth.RemediationFailed",
}


def event_type(alert: Alert) -> str:
    if alert.notice is Notice.WATCHDOG:
        return WATCHDOG
    if alert.action is not None:
        return REMEDIATION.get(alert.action.outcome, REMEDIATION["failed"])
    if alert.resolved:
        return RECOVERED
    return REVOKED if alert.level is Level.REVOKED else AT_RISK


def cloud_event(alert: Alert, now: datetime) -> CloudEvent[Any]:
    data: dict[str, Any] = {**alert.document(), "headline": alert.headline(now), "window": alert.window(now)}
    return CloudEvent(
        source=SOURCE, type=event_type(alert), data=data, subject=alert.namespace_id, id=alert.id, time=now
    )


class EventGridSink:
    kind = "eventgrid"

    def __init__(
        self,
        name: str,
        endpoint: str,
        credential: AzureKeyCredential | AsyncTokenCredential,
        *,
        ca_bundle: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self._key = credential.key if isinstance(credential, AzureKeyCredential) else None
        options: dict[str, Any] = {
            "retry_total": 0,  # the outbox retries, with back-off and in order
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }
        if ca_bundle:
            options["connection_verify"] = ca_bundle
        self._client = EventGridPublisherClient(endpoint, credential, **options)

    def __repr__(self) -> str:
        return f"EventGridSink(name={self.name!r})"

    async def send(self, alert: Alert, *, now: datetime) -> None:
        try:
            await self._client.send(cloud_event(alert, now))
        except HttpResponseError as error:
            reason = scrub(describe_failure(error), (self._key,))
            status = error.status_code or 0
            raise DeliveryError(self.name, reason, retryable=status not in {400, 413}) from None
        except AzureError as error:
            raise DeliveryError(self.name, scrub(describe_failure(error), (self._key,))) from None

    async def close(self) -> None:
        await self._client.close()
