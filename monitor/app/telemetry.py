"""OpenTelemetry instruments: every name, unit and attribute in one place, through the API only.

The composition root chooses the provider and exporters; without one these are no-ops. Attributes
stay bounded (action, outcome, sink): never a version id, a URL or a secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from monitor import __version__
from monitor.domain.fleet import FleetReport
from monitor.domain.model import vault_short_name
from monitor.domain.prediction import Status

_meter = metrics.get_meter("keyhealth", __version__)
TRACER = trace.get_tracer("keyhealth", __version__)


class TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids to each record (`trace_id`, `span_id`; "-" outside a span),
    so a log line can be found from its trace and back."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace_id = f"{context.trace_id:032x}" if context.is_valid else "-"
        record.span_id = f"{context.span_id:016x}" if context.is_valid else "-"
        return True


REMEDIATION_ACTIONS = _meter.create_counter(
    "keyhealth.remediation.actions",
    unit="{decision}",
    description="Remediation decisions, by action (rotate, recover, unpin) and outcome "
    "(done, dry-run, skipped, failed, blocked).",
)
ALERT_DELIVERIES = _meter.create_counter(
    "keyhealth.alerts.deliveries",
    unit="{attempt}",
    description="Alert delivery attempts, by sink and outcome (delivered, retried, undeliverable).",
)


def count_remediation(action: str, outcome: str) -> None:
    REMEDIATION_ACTIONS.add(1, {"action": action, "outcome": outcome})


def count_delivery(sink: str, outcome: str) -> None:
    ALERT_DELIVERIES.add(1, {"sink": sink, "outcome": outcome})


POLLS = _meter.create_counter("keyhealth.polls", unit="{poll}", description="Polls, by outcome (ok, skipped, failed).")
EVENTS = _meter.create_counter(
    "keyhealth.events", unit="{event}", description="Key Vault events, by event type and outcome."
)
POLL_DURATION = _meter.create_histogram(
    "keyhealth.poll.duration", unit="s", description="Wall time of one poll: read, predict, record, alert."
)
EVENT_DURATION = _meter.create_histogram(
    "keyhealth.event.duration", unit="s", description="Wall time from handling an event to its predictions recorded."
)


AZURE_REQUEST_DURATION = _meter.create_histogram(
    "keyhealth.azure.request.duration",
    unit="s",
    description="Latency of each Azure request attempt, by API (keyvault, arm.servicebus, ...), method and status "
    "class (2xx, 4xx, 5xx, error).",
)


def record_azure_request(api: str, method: str, outcome: str, seconds: float) -> None:
    AZURE_REQUEST_DURATION.record(seconds, {"api": api, "method": method, "status": outcome})


def count_poll(outcome: str, seconds: float | None = None) -> None:
    POLLS.add(1, {"outcome": outcome})
    if seconds is not None:
        POLL_DURATION.record(seconds, {"outcome": outcome})


def count_event(event_type: str, outcome: str, seconds: float | None = None) -> None:
    EVENTS.add(1, {"event_type": event_type, "outcome": outcome})
    if seconds is not None:
        EVENT_DURATION.record(seconds, {"event_type": event_type})


@dataclass(frozen=True, slots=True)
class _NamespaceReading:
    name: str
    subscription: str
    kind: str  # servicebus or eventhubs
    status: str
    usable: int
    listed: int
    revoked_at: datetime | None
    evaluated_at: datetime


@dataclass(frozen=True, slots=True)
class _KeyReading:
    vault: str
    key: str
    expires_at: datetime | None
    evaluated_at: datetime


class FleetReadings:
    """The latest judgement of each namespace and key, which the gauges report when a reader collects.

    A poll replaces the fleet; an event updates the namespaces it re-judged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, _NamespaceReading] = {}
        self._keys: dict[tuple[str, str], _KeyReading] = {}

    def record(self, report: FleetReport, *, whole_fleet: bool) -> None:
        namespaces: dict[str, _NamespaceReading] = {}
        keys: dict[tuple[str, str], _KeyReading] = {}
        for judged in report.namespaces:
            prediction = judged.prediction
            namespace = prediction.namespace
            parts = namespace.id.strip("/").split("/")
            subscription = parts[1] if len(parts) > 1 and parts[0].lower() == "subscriptions" else ""
            namespaces[namespace.id.lower()] = _NamespaceReading(
                namespace.name,
                subscription,
                namespace.kind.value,
                prediction.status_now.value,
                prediction.usable_keys_now,
                prediction.keys_total,
                prediction.revoked_at_earliest,
                report.now,
            )
            for assessment in prediction.assessments_now:
                ref = assessment.ref
                if assessment.version is None or ref.version is not None:
                    continue  # the gauge is about keys' current versions
                keys[ref.key_id] = _KeyReading(
                    vault_short_name(ref.vault), ref.name, assessment.version.exp, report.now
                )
        with self._lock:
            if whole_fleet:
                self._namespaces, self._keys = namespaces, keys
            else:
                self._namespaces.update(namespaces)
                self._keys.update(keys)

    def namespace_readings(self) -> list[_NamespaceReading]:
        with self._lock:
            return list(self._namespaces.values())

    def key_readings(self) -> list[_KeyReading]:
        with self._lock:
            return list(self._keys.values())


READINGS = FleetReadings()
_STATUSES = tuple(s.value for s in Status)


def _labels(reading: _NamespaceReading) -> dict[str, str]:
    return {"namespace": reading.name, "subscription": reading.subscription, "kind": reading.kind}


def _revocation(options: CallbackOptions) -> Iterator[Observation]:
    for reading in READINGS.namespace_readings():
        if reading.revoked_at is not None:  # absent when none is predicted
            seconds = (reading.revoked_at - reading.evaluated_at).total_seconds()
            yield Observation(max(seconds, 0.0), _labels(reading))


def _usable(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(r.usable, _labels(r)) for r in READINGS.namespace_readings()]


def _listed(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(r.listed, _labels(r)) for r in READINGS.namespace_readings()]


def _status(options: CallbackOptions) -> Iterator[Observation]:
    for reading in READINGS.namespace_readings():
        for status in _STATUSES:
            yield Observation(1 if reading.status == status else 0, {**_labels(reading), "status": status})


def _key_expiry(options: CallbackOptions) -> Iterator[Observation]:
    for reading in READINGS.key_readings():
        if reading.expires_at is not None:
            seconds = (reading.expires_at - reading.evaluated_at).total_seconds()
            yield Observation(seconds, {"vault": reading.vault, "key": reading.key})


def _blind(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(sum(1 for r in READINGS.namespace_readings() if r.status == Status.UNKNOWN.value))]


_meter.create_observable_gauge(
    "keyhealth.namespace.revocation.seconds",
    [_revocation],
    unit="s",
    description="Seconds from the last judgement to the earliest predicted revocation; absent when none.",
)
_meter.create_observable_gauge(
    "keyhealth.namespace.usable_keys", [_usable], unit="{key}", description="Listed keys usable now."
)
_meter.create_observable_gauge(
    "keyhealth.namespace.listed_keys", [_listed], unit="{key}", description="Keys the namespace lists (up to 3)."
)
_meter.create_observable_gauge(
    "keyhealth.namespace.status",
    [_status],
    unit="1",
    description="1 for the namespace's current status (healthy, degraded, revoked, unknown), 0 for the others.",
)
_meter.create_observable_gauge(
    "keyhealth.key.expiry.seconds",
    [_key_expiry],
    unit="s",
    description="Seconds from the last judgement to the expiry of the key's current version (negative: expired).",
)


class PollHeartbeat:
    """When the last complete poll (by any instance, as far as this one has seen) ended, for `keyhealth.poll.age`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: datetime | None = None

    def saw(self, at: datetime) -> None:
        with self._lock:
            if self._at is None or at > self._at:
                self._at = at

    def age(self, now: datetime) -> float | None:
        with self._lock:
            return None if self._at is None else (now - self._at).total_seconds()


HEARTBEAT = PollHeartbeat()


def _poll_age(options: CallbackOptions) -> Iterable[Observation]:
    # Wall time on purpose: the gauge must keep rising while nothing polls (a dead poller emits nothing itself).
    age = HEARTBEAT.age(datetime.now(UTC))
    return [] if age is None else [Observation(max(age, 0.0))]


_meter.create_observable_gauge(
    "keyhealth.poll.age",
    [_poll_age],
    unit="s",
    description="Seconds since the last complete poll by any instance (as this one last read it); absent before one.",
)
_meter.create_observable_gauge(
    "keyhealth.monitor.blind", [_blind], unit="{namespace}", description="Namespaces the monitor cannot judge."
)
