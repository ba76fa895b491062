"""OpenTelemetry instruments: every name, unit and attribute in one place, through the API only.

The composition root chooses the provider and exporters; without one these are no-ops. Attributes
stay bounded (action, outcome, sink): never a version id, a URL or a secret.
"""

from __future__ import annotations

from opentelemetry import metrics

from monitor import __version__

_meter = metrics.get_meter("keyhealth", __version__)

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
