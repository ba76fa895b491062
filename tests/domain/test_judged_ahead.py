"""evaluate with reports judged ahead (a poll judges inventory pages before the rest is read): a report is kept
only while the whole snapshot says the same of what it rested on; whatever is kept, the report is the one
judging everything at the end would give."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, JudgedAhead, NamespaceJudge, evaluate
from monitor.domain.model import BlindScope, BlindSpot, Key, KeyVersion, Scenario, key_url
from monitor.domain.scenario import parse_scenario
from tests.builders import VAULT, key, namespace, ref, scenario

THRESHOLDS = Thresholds()


def _scenario() -> Scenario:
    parsed, _ = parse_scenario(
        scenario(
            [
                namespace("sb-one", ref("k1"), ref("k2")),
                namespace("sb-two", ref("k2")),
                namespace("sb-three", ref("k3")),
            ],
            [key("k1"), key("k2"), key("k3")],
        )
    )
    return parsed


def _ahead(judged_on: Scenario) -> JudgedAhead:
    """Every namespace of `judged_on` judged against its vaults and keys alone, as JudgeAhead does."""
    basis = dataclasses.replace(judged_on.snapshot, namespaces=(), blind=())
    judge = NamespaceJudge(dataclasses.replace(judged_on, snapshot=basis), THRESHOLDS)
    reports = {n.id: judge.report(n) for n in judged_on.snapshot.namespaces}
    return JudgedAhead(judged_on.now, judged_on.effective_horizon, basis, reports)


def _kept(report: FleetReport, ahead: JudgedAhead) -> set[str]:
    return {n.prediction.namespace.name for n in report.namespaces if ahead.reports.get(n.prediction.namespace.id) is n}


def _with_keys(whole: Scenario, keys: tuple[Key, ...], blind: tuple[BlindSpot, ...] = ()) -> Scenario:
    return dataclasses.replace(whole, snapshot=dataclasses.replace(whole.snapshot, keys=keys, blind=blind))


def test_reports_resting_on_what_the_snapshot_still_says_are_kept_as_they_are():
    whole = _scenario()
    ahead = _ahead(whole)
    report = evaluate(whole, THRESHOLDS, ahead=ahead)
    assert _kept(report, ahead) == {"sb-one", "sb-two", "sb-three"}
    assert report == evaluate(whole, THRESHOLDS)


def _changed_k1(whole: Scenario) -> Scenario:
    disabled = tuple(
        dataclasses.replace(k, versions=tuple(dataclasses.replace(v, enabled=False) for v in k.versions))
        if k.name == "k1"
        else k
        for k in whole.snapshot.keys
    )
    return _with_keys(whole, disabled)


def _k2_unread(whole: Scenario) -> Scenario:
    spot = BlindSpot(BlindScope.KEY, key_url(VAULT, "k2"), "HTTP 500")
    return _with_keys(whole, tuple(k for k in whole.snapshot.keys if k.name != "k2"), (spot,))


def _vault_blind(whole: Scenario) -> Scenario:
    spot = BlindSpot(BlindScope.VAULT, VAULT, "403 Forbidden")
    return _with_keys(whole, whole.snapshot.keys, (spot,))


def _three_moved_to_a_new_key(whole: Scenario) -> Scenario:
    moved = tuple(
        dataclasses.replace(n, keys=(dataclasses.replace(n.keys[0], name="k4"),)) if n.name == "sb-three" else n
        for n in whole.snapshot.namespaces
    )
    k4 = Key(VAULT, "k4", (KeyVersion("v1", whole.now - timedelta(days=1)),))
    snapshot = dataclasses.replace(whole.snapshot, namespaces=moved, keys=(*whole.snapshot.keys, k4))
    return dataclasses.replace(whole, snapshot=snapshot)


def _a_namespace_blind(whole: Scenario) -> Scenario:
    target = next(n.id for n in whole.snapshot.namespaces if n.name == "sb-two")
    spot = BlindSpot(BlindScope.NAMESPACE, target.upper(), "its subscription could not be listed")
    return _with_keys(whole, whole.snapshot.keys, (spot,))


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        (_changed_k1, {"sb-two", "sb-three"}),  # a key read again since, and different
        (_k2_unread, {"sb-three"}),  # a key whose read failed in the end
        (_vault_blind, set()),  # the vault's access could not be read in the end
        (_three_moved_to_a_new_key, {"sb-one", "sb-two"}),  # a namespace listed differently
        (_a_namespace_blind, {"sb-one", "sb-three"}),
    ],
)
def test_a_report_resting_on_what_the_whole_snapshot_says_otherwise_is_judged_again(change, kept):
    whole = _scenario()
    ahead = _ahead(whole)
    final = change(whole)
    report = evaluate(final, THRESHOLDS, ahead=ahead)
    assert _kept(report, ahead) == kept
    assert report == evaluate(final, THRESHOLDS)


def test_reports_judged_at_another_instant_are_not_kept():
    whole = _scenario()
    ahead = _ahead(whole)
    later = dataclasses.replace(whole, now=whole.now + timedelta(minutes=5))
    report = evaluate(later, THRESHOLDS, ahead=ahead)
    assert _kept(report, ahead) == set()
    assert report == evaluate(later, THRESHOLDS)
