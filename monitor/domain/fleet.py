"""A whole fleet judged at once: predictions with their findings, and the overall verdict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.domain.findings import Finding, FindingsJudge, Severity, Thresholds
from monitor.domain.model import BlindScope, BlindSpot, Scenario
from monitor.domain.prediction import NamespacePrediction, Status, predict_scenario
from monitor.domain.world import World


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
    blind: tuple[BlindSpot, ...] = ()  # everything the monitor could not read

    @property
    def fleet_blind(self) -> tuple[BlindSpot, ...]:
        """Subscriptions whose namespaces could not even be listed."""
        return tuple(b for b in self.blind if b.scope is BlindScope.SUBSCRIPTION)

    @property
    def verdict(self) -> Severity | None:
        """CRITICAL if any namespace is revoked or unknown, a subscription unreadable, or a finding critical;
        else the worst severity."""
        if self.fleet_blind or any(
            n.prediction.status_now in {Status.REVOKED, Status.UNKNOWN} for n in self.namespaces
        ):
            return Severity.CRITICAL
        return max((n.worst for n in self.namespaces if n.worst is not None), default=None)


def evaluate(scenario: Scenario, thresholds: Thresholds) -> FleetReport:
    """Predict and judge every namespace of `scenario`.

    Raises ScenarioError when the scenario's changes cannot apply or its horizon is not after now.
    """
    world, predictions = predict_scenario(scenario)
    return judge(scenario, world, predictions, thresholds)


def judge(
    scenario: Scenario, world: World, predictions: list[NamespacePrediction], thresholds: Thresholds
) -> FleetReport:
    """`evaluate` after prediction: the findings for what `predict_scenario(scenario)` returned."""
    findings_for = FindingsJudge(world, thresholds).findings
    reports = tuple([NamespaceReport(p, tuple(findings_for(p))) for p in predictions])
    return FleetReport(
        now=scenario.now, horizon=scenario.effective_horizon, namespaces=reports, blind=scenario.snapshot.blind
    )
