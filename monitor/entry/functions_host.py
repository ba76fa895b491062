"""Glue between the Functions triggers and the service: one Monitor per worker, events converted, status served."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from monitor.app.events import EventOutcome, handle_events
from monitor.app.monitor import Monitor
from monitor.app.poll import deliver_alerts, poll
from monitor.app.status import status_document
from monitor.entry.bootstrap import build_monitor, configure_telemetry
from monitor.entry.config import Settings
from monitor.formats.events import KeyVaultEvent, RejectedEvent, SubscriptionValidation, parse_event

log = logging.getLogger("keyhealth")
_monitor: Monitor | None = None


def monitor() -> Monitor:
    """The worker's Monitor, built on first use from the app settings (and kept: workers are long-lived)."""
    global _monitor  # noqa: PLW0603 - one per worker process, as the Functions host expects
    if _monitor is None:
        configure_telemetry(prometheus=False)  # OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
        _monitor = build_monitor(Settings.from_environment())
    return _monitor


def use_monitor(instance: Monitor | None) -> None:
    """Replace the worker's Monitor (tests hand in one wired to the stand-in)."""
    global _monitor  # noqa: PLW0603
    _monitor = instance


def _now() -> datetime:
    return datetime.now(UTC)


def event_document(event: func.EventGridEvent | func.CloudEvent) -> dict[str, Any]:
    """The event as the JSON Event Grid delivered, whichever binding type the host made of it.

    The CloudEvents binding leaves `event_type`/`topic` of the Event Grid type empty, so each type is
    read through its own fields.
    """
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion or "1.0",
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time.isoformat() if event.time else None,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }


async def on_event(event: func.EventGridEvent | func.CloudEvent) -> EventOutcome | None:
    """Handle one delivered event; a malformed one is logged and dropped (retrying cannot mend it)."""
    parsed = parse_event(event_document(event))
    if isinstance(parsed, RejectedEvent):
        log.warning("keyhealth: rejected event %s: %s", parsed.id, parsed.reason)
        return None
    if isinstance(parsed, SubscriptionValidation):  # the trigger binding answers the handshake itself
        return None
    assert isinstance(parsed, KeyVaultEvent)  # noqa: S101 - narrows the type; holds by construction
    (result,) = await handle_events(monitor(), [parsed], now=_now())  # coalesced with the worker's recent events
    if isinstance(result, Exception):
        raise result  # the trigger fails and Event Grid retries it
    log.info("keyhealth: event %s %s: %s %s", parsed.id, parsed.event_type, result.outcome.value, result.namespaces)
    return result.outcome


async def on_timer(timer: func.TimerRequest) -> None:
    """Run the full poll (only one instance at a time does)."""
    if timer.past_due:
        log.info("keyhealth: the poll timer is past due; polling now")
    result = await poll(monitor(), now=_now())
    log.info("%s", result.describe())


async def on_delivery_timer(timer: func.TimerRequest) -> None:
    """Send the queued alerts that are due (only one instance at a time does)."""
    del timer
    report = await deliver_alerts(monitor(), now=_now())
    if report.delivered or report.retried or report.abandoned or report.waiting:
        log.info("%s", report.describe())


async def status(namespace: str | None) -> func.HttpResponse:
    """The fleet's last known state as JSON, or one namespace's (by name or ARM id)."""
    code, body = await status_document(monitor().store, namespace)
    return func.HttpResponse(json.dumps(body), status_code=code, mimetype="application/json")
