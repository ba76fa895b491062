"""A whole fleet judged at once: predictions with their findings, and the overall verdict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.domain.findings import Finding, Severity, Thresholds, findings_for
from monitor.domain.model import Scenario
from monitor.domain.prediction import NamespacePrediction, Status, predict_scenario


@dataclass(frozen=True, slots=True)
class NamespaceReport:
    """One namespace's prediction and findings."""

    prediction: NamespacePrediction
    findings: tuple[Finding, ...]

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Every namespace of a scenario, sorted by name."""

    now: datetime
    horizon: datetime
    namespaces: tuple[NamespaceReport, ...]

    @property
    def verdict(self) -> Severity | None:
        """CRITICAL if any namespace is revoked or has a critical finding, else the worst severity."""
        if any(n.prediction.status_now is Status.REVOKED for n in self.namespaces):
            return Severity.CRITICAL
        return max((n.worst for n in self.namespaces if n.worst is not None), default=None)


def evaluate(scenario: Scenario, thresholds: Thresholds) -> FleetReport:
    """Predict and judge every namespace of `scenario`.

    Raises ScenarioError when the scenario's changes cannot apply or its horizon is not after now.
    """
    world, predictions = predict_scenario(scenario)
    reports = tuple(NamespaceReport(p, tuple(findings_for(p, world, thresholds))) for p in predictions)
    return FleetReport(now=scenario.now, horizon=scenario.effective_horizon, namespaces=reports)
