"""A whole fleet judged at once: predictions with their findings, and the overall verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from monitor.domain.findings import Finding, FindingsJudge, Severity, Thresholds
from monitor.domain.model import (
    BlindScope,
    BlindSpot,
    Key,
    KeyId,
    Namespace,
    Scenario,
    Snapshot,
    Vault,
    key_id_of_url,
    name_id,
    vault_id,
)
from monitor.domain.prediction import NamespacePrediction, Status, by_name, predict_scenario, scenario_predictor
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


@dataclass(frozen=True, slots=True)
class JudgedAhead:
    """Namespaces judged before the rest of their snapshot was read, against `basis` (the vaults and keys
    read by then, no blind spots): the poll judges and records a page of the inventory while the next is
    fetched. `evaluate` keeps a report only while the whole snapshot says the same of what it rested on."""

    now: datetime
    horizon: datetime
    basis: Snapshot
    reports: Mapping[str, NamespaceReport]  # by namespace id, as listed


class NamespaceJudge:
    """Predicts and judges namespaces one at a time against one scenario (what `evaluate` does for all)."""

    def __init__(self, scenario: Scenario, thresholds: Thresholds) -> None:
        """Raises ScenarioError when the scenario's changes cannot apply or its horizon is not after now."""
        world, self._predictor = scenario_predictor(scenario)
        self._findings = FindingsJudge(world, thresholds).findings

    def report(self, namespace: Namespace) -> NamespaceReport:
        prediction = self._predictor.predict(namespace)
        return NamespaceReport(prediction, tuple(self._findings(prediction)))


def evaluate(scenario: Scenario, thresholds: Thresholds, *, ahead: JudgedAhead | None = None) -> FleetReport:
    """Predict and judge every namespace of `scenario`; those `ahead` judged the same are not judged again.

    Raises ScenarioError when the scenario's changes cannot apply or its horizon is not after now.
    """
    kept = _still_true(ahead, scenario) if ahead is not None else {}
    if not kept:
        world, predictions = predict_scenario(scenario)
        return judge(scenario, world, predictions, thresholds)
    rest = [n for n in scenario.snapshot.namespaces if kept.get(n.id) is None]
    if not rest:  # a steady poll's usual end: no World to build for nothing left to judge
        reports = sorted(kept.values(), key=lambda r: by_name(r.prediction.namespace))
        horizon = scenario.effective_horizon
        return FleetReport(now=scenario.now, horizon=horizon, namespaces=tuple(reports), blind=scenario.snapshot.blind)
    partial = dataclasses.replace(scenario, snapshot=dataclasses.replace(scenario.snapshot, namespaces=tuple(rest)))
    world, predictions = predict_scenario(partial)
    judged = judge(partial, world, predictions, thresholds)
    reports = sorted((*kept.values(), *judged.namespaces), key=lambda r: by_name(r.prediction.namespace))
    return dataclasses.replace(judged, namespaces=tuple(reports), blind=scenario.snapshot.blind)


def _still_true(ahead: JudgedAhead, scenario: Scenario) -> dict[str, NamespaceReport]:
    """The reports of `ahead` whose namespace is listed alike in `scenario`, every vault and key it names
    alike in its snapshot and not blind there: judged again, each would say the same."""
    snapshot = scenario.snapshot
    if scenario.changes or (ahead.now, ahead.horizon) != (scenario.now, scenario.effective_horizon):
        return {}
    blind_vaults = {vault_id(s.target) for s in snapshot.blind if s.scope is BlindScope.VAULT}
    blind_keys = {key_id_of_url(s.target) for s in snapshot.blind if s.scope is BlindScope.KEY}
    blind_namespaces = {name_id(s.target) for s in snapshot.blind if s.scope is BlindScope.NAMESPACE}
    vaults: dict[str, Vault] = {v.id: v for v in snapshot.vaults}
    keys: dict[KeyId, Key] = {k.id: k for k in snapshot.keys}
    same_vaults = {v.id for v in ahead.basis.vaults if v.id not in blind_vaults and _same(vaults.get(v.id), v)}
    same_keys = {k.id for k in ahead.basis.keys if k.id not in blind_keys and _same(keys.get(k.id), k)}
    listed = {n.id: n for n in snapshot.namespaces}
    kept: dict[str, NamespaceReport] = {}
    for namespace_id, report in ahead.reports.items():
        judged = report.prediction.namespace
        if not _same(listed.get(namespace_id), judged) or name_id(namespace_id) in blind_namespaces:
            continue
        if all(vault_id(ref.vault) in same_vaults and ref.key_id in same_keys for ref in judged.keys):
            kept[namespace_id] = report
    return kept


def _same(now: object, then: object) -> bool:
    return now is then or (now is not None and now == then)


def judge(
    scenario: Scenario, world: World, predictions: list[NamespacePrediction], thresholds: Thresholds
) -> FleetReport:
    """`evaluate` after prediction: the findings for what `predict_scenario(scenario)` returned."""
    findings_for = FindingsJudge(world, thresholds).findings
    reports = tuple([NamespaceReport(p, tuple(findings_for(p))) for p in predictions])
    return FleetReport(
        now=scenario.now, horizon=scenario.effective_horizon, namespaces=reports, blind=scenario.snapshot.blind
    )
