"""Property-based tests: revocation prediction against the rules of usability and the scenario format."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import yaml
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from monitor.domain.errors import ScenarioError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.model import (
    POLL_INTERVAL,
    Change,
    DeleteKey,
    Key,
    KeyRef,
    KeyVersion,
    Namespace,
    NamespaceIdentity,
    NewVersion,
    RecoverKey,
    Scenario,
    Snapshot,
    UpdateVersion,
    Vault,
)
from monitor.domain.prediction import NamespacePrediction, Status, predict_scenario, usable_intervals
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from monitor.domain.usability import assess
from monitor.domain.world import World
from monitor.formats.render import prediction_document
from tests.strategies import BASE, all_refs, ref_identity, scenarios, vault_uris

SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
POLL_SECONDS = int(POLL_INTERVAL.total_seconds())

PROPERTY = settings(max_examples=100, deadline=None)
ORACLE = settings(max_examples=60, deadline=None)


def _by_id(predictions: Iterable[NamespacePrediction]) -> dict[str, NamespacePrediction]:
    return {p.namespace.id: p for p in predictions}


def _not_earlier(before: datetime | None, after: datetime | None) -> bool:
    """None means never: a time may move later or become None, None must stay None."""
    if before is None:
        return after is None
    return after is None or after >= before


def _revoked(world: World, namespace: Namespace, t: datetime) -> bool:
    """Point evaluation: a poll at t revokes the namespace when no listed reference is usable."""
    return not any(assess(world, namespace, ref, t).usable for ref in namespace.keys)


def _document(scenario: Scenario) -> dict[str, Any]:
    """scenario_document's output as JSON text would give it back: a fresh copy, free to change."""
    document: dict[str, Any] = json.loads(json.dumps(scenario_document(scenario)))
    return document


def _predicted_document(document: dict[str, Any]) -> dict[str, object]:
    scenario, _ = parse_scenario(document)
    return prediction_document(evaluate(scenario, Thresholds()))


def _version_instants(version: KeyVersion) -> list[datetime]:
    return [t for t in (version.created, version.nbf, version.exp) if t is not None]


def _change_instants(change: Change) -> list[datetime]:
    instants = [change.at]
    if isinstance(change, NewVersion):
        instants += _version_instants(change.version)
    if isinstance(change, UpdateVersion):
        instants += [t for t in (change.nbf, change.exp) if isinstance(t, datetime)]
    return instants


def _scenario_instants(scenario: Scenario) -> set[datetime]:
    """Every instant the scenario mentions, straight from its values (not from the interval code)."""
    instants = {scenario.now, scenario.effective_horizon}
    for key in scenario.snapshot.keys:
        for version in key.versions:
            instants.update(_version_instants(version))
    for change in scenario.changes:
        instants.update(_change_instants(change))
    return instants


@PROPERTY
@given(data=st.data())
def test_adding_a_reference_never_brings_revocation_earlier(data: st.DataObject) -> None:
    """Adding a key reference to a namespace with fewer than 3 never makes revoked_at_earliest or revoked_by earlier."""
    scenario = data.draw(scenarios())
    roomy = [n for n in scenario.snapshot.namespaces if len(n.keys) < 3]
    assume(roomy)
    target = data.draw(st.sampled_from(roomy))
    taken = {ref_identity(ref) for ref in target.keys}
    new_ref = data.draw(st.sampled_from([r for r in all_refs(vault_uris(scenario)) if ref_identity(r) not in taken]))
    refs = list(target.keys)
    refs.insert(data.draw(st.integers(0, len(refs))), new_ref)
    grown = replace(target, keys=tuple(refs))
    namespaces = tuple(grown if n is target else n for n in scenario.snapshot.namespaces)
    bigger = replace(scenario, snapshot=replace(scenario.snapshot, namespaces=namespaces))

    before = _by_id(predict_scenario(scenario)[1])
    after = _by_id(predict_scenario(bigger)[1])

    for namespace_id, old in before.items():
        new = after[namespace_id]
        if namespace_id != target.id:
            assert (new.revoked_at_earliest, new.revoked_by) == (old.revoked_at_earliest, old.revoked_by)
            continue
        assert _not_earlier(old.revoked_at_earliest, new.revoked_at_earliest)
        assert _not_earlier(old.revoked_by, new.revoked_by)


NOW = BASE + timedelta(hours=5)
HORIZON = NOW + timedelta(hours=2)
VAULT = "https://kv-a.vault.azure.net"


def _one_key_scenario(*outages: tuple[int, int]) -> Scenario:
    """One namespace on one healthy key, soft-deleted and recovered at the given offsets (seconds) from now."""
    changes: list[Change] = []
    for start, end in outages:
        changes.append(DeleteKey(at=NOW + start * SECOND, vault=VAULT, key="k1"))
        if NOW + end * SECOND < HORIZON:
            changes.append(RecoverKey(at=NOW + end * SECOND, vault=VAULT, key="k1"))
    namespace = Namespace(id="/ns/a", name="a", keys=(KeyRef(vault=VAULT, name="k1"),), identity=NamespaceIdentity("p"))
    return Scenario(
        now=NOW,
        horizon=HORIZON,
        snapshot=Snapshot(
            vaults=(Vault(uri=VAULT, access={"p": frozenset({"get", "wrapKey", "unwrapKey"})}),),
            keys=(Key(vault=VAULT, name="k1", versions=(KeyVersion(version="v0", created=NOW - 3600 * SECOND),)),),
            namespaces=(namespace,),
        ),
        changes=tuple(changes),
    )


# The boundaries random scenarios reach only now and then, always tried first.
@example(_one_key_scenario((600, 900)))  # exactly 300 s: certain
@example(_one_key_scenario((600, 899)))  # 299 s: possible, not certain
@example(_one_key_scenario((600, 899), (1800, 2400)))  # possible first, certain later
@example(_one_key_scenario((7200 - 100, 7200 + 600)))  # 100 s before the horizon, never ends before it: certain
@PROPERTY
@given(scenarios())
def test_revoked_by_is_five_minutes_after_a_certain_first_stretch(scenario: Scenario) -> None:
    """revoked_by is earliest + 300 s if the first stretch lasts 300 s or reaches the horizon, else None or later."""
    world, predictions = predict_scenario(scenario)
    horizon = scenario.effective_horizon
    for prediction in predictions:
        earliest = prediction.revoked_at_earliest
        if earliest is None:
            assert prediction.revoked_by is None
            continue
        # Judged by point evaluation at every whole second (all change instants are whole seconds).
        namespace = prediction.namespace
        certain_end = min(earliest + POLL_INTERVAL, horizon)
        seconds = int((certain_end - earliest).total_seconds())
        certain = all(_revoked(world, namespace, earliest + k * SECOND) for k in range(seconds))
        if certain:
            assert prediction.revoked_by == earliest + POLL_INTERVAL
        else:
            assert prediction.revoked_by is None or prediction.revoked_by > earliest + POLL_INTERVAL


@PROPERTY
@given(data=st.data())
def test_prediction_document_ignores_listing_order(data: st.DataObject) -> None:
    """The prediction document does not depend on the order of vaults, keys or namespaces (nor of access maps)."""
    scenario = data.draw(scenarios())
    document = _document(scenario)
    shuffled = dict(document)
    for field in ("vaults", "keys", "namespaces"):
        shuffled[field] = data.draw(st.permutations(document[field]), label=field)
    shuffled["vaults"] = [
        {**vault, "access": dict(data.draw(st.permutations(list(vault["access"].items())), label="access"))}
        for vault in shuffled["vaults"]
    ]
    at = [change.at for change in scenario.changes]
    if len(set(at)) == len(at):  # changes at one instant apply in listing order; at distinct instants, in time order
        shuffled["changes"] = data.draw(st.permutations(document.get("changes", [])), label="changes")

    assert _predicted_document(shuffled) == _predicted_document(document)


def _outcome(document: dict[str, Any]) -> object:
    """The prediction document, or just "rejected" when the scenario is invalid."""
    try:
        return _predicted_document(document)
    except ScenarioError:
        return "rejected"


def _other_spelling(name: str) -> str:
    """The same name in another case: equal by the format's rule that names compare case-insensitively."""
    return name.upper() if name != name.upper() else name.lower()


@PROPERTY
@given(data=st.data())
def test_prediction_ignores_order_of_entries_naming_one_principal_or_identity_twice(data: st.DataObject) -> None:
    """The order of access or user-assigned entries spelling one name two ways does not change the outcome."""
    scenario = data.draw(scenarios())
    document = _document(scenario)
    # Principals the namespaces act as: a second spelling of one of them is what can change an outcome.
    acting = {
        principal.lower()
        for namespace in scenario.snapshot.namespaces
        for ref in namespace.keys
        if (principal := namespace.identity.principal_for(ref.identity)) is not None
    }
    for vault in document["vaults"]:
        access = vault["access"]
        if data.draw(st.booleans(), label="second spellings of principals"):
            for principal in [p for p in access if p.lower() in acting]:
                # The other spelling grants the opposite, so that which one wins matters.
                enough = {p.lower() for p in access[principal]} >= {"get", "wrapkey", "unwrapkey"}
                access[_other_spelling(principal)] = [] if enough else ["get", "unwrapKey", "wrapKey"]
    for namespace in document["namespaces"]:
        user_assigned = namespace["identity"]["user_assigned"]
        if user_assigned and data.draw(st.sampled_from([False, False, True]), label="second spelling of an identity"):
            resource_id = data.draw(st.sampled_from(sorted(user_assigned)))
            user_assigned[_other_spelling(resource_id)] = None if user_assigned[resource_id] else "p-ua-x"
    expected = _outcome(document)

    # Reversed, every pair of spellings swaps places.
    for vault in document["vaults"]:
        vault["access"] = dict(reversed(vault["access"].items()))
    for namespace in document["namespaces"]:
        identity = namespace["identity"]
        identity["user_assigned"] = dict(reversed(identity["user_assigned"].items()))

    assert _outcome(document) == expected


@PROPERTY
@given(data=st.data())
def test_revocation_ignores_the_order_of_a_namespaces_key_references(data: st.DataObject) -> None:
    """Reordering a namespace's key references changes neither its status, revocation window nor set of findings."""
    scenario = data.draw(scenarios())
    document = _document(scenario)
    shuffled = dict(document)
    shuffled["namespaces"] = [
        {**namespace, "keys": data.draw(st.permutations(namespace["keys"]), label="keys")}
        for namespace in document["namespaces"]
    ]

    def gist(prediction: dict[str, Any]) -> list[dict[str, object]]:
        summary = []
        for namespace in prediction["namespaces"]:
            kept = {k: v for k, v in namespace.items() if k not in ("findings", "keys")}
            # Messages list the references in their order; what was found, where and when must not change.
            fields = ("code", "severity", "key", "version", "at")
            kept["findings"] = sorted(json.dumps([f.get(k) for k in fields]) for f in namespace["findings"])
            kept["keys"] = sorted(json.dumps(k, sort_keys=True) for k in namespace["keys"])
            summary.append(kept)
        return summary

    assert gist(_predicted_document(shuffled)) == gist(_predicted_document(document))


@ORACLE
@given(scenarios(max_horizon=3 * 3600))
def test_predictions_match_simulated_polls_at_every_phase(scenario: Scenario) -> None:
    """Polls every 300 s at each whole-second phase, judged with assess, agree with the predicted window and status."""
    world, predictions = predict_scenario(scenario)
    now, horizon = scenario.now, scenario.effective_horizon
    span = int((horizon - now).total_seconds())
    judged = []
    for prediction in predictions:  # the cheap check first, so that a failure shrinks fast
        assessments = [assess(world, prediction.namespace, ref, now) for ref in prediction.namespace.keys]
        usable_now = [a.usable for a in assessments]
        assert prediction.usable_keys_now == sum(usable_now)
        if any(a.is_unknown for a in assessments):  # a blind spot: neither status nor window is claimed
            assert prediction.status_now is Status.UNKNOWN
            assert (prediction.revoked_at_earliest, prediction.revoked_by) == (None, None)
            continue
        if not any(usable_now):
            assert prediction.status_now is Status.REVOKED
        elif all(usable_now):
            assert prediction.status_now is Status.HEALTHY
        else:
            assert prediction.status_now is Status.DEGRADED
        judged.append(prediction)

    for prediction in judged:
        namespace = prediction.namespace
        memo: dict[int, bool] = {}

        def revoked(offset: int, namespace: Namespace = namespace, memo: dict[int, bool] = memo) -> bool:
            if offset not in memo:
                memo[offset] = _revoked(world, namespace, now + offset * SECOND)
            return memo[offset]

        first_revoked = [
            next((offset for offset in range(phase, span, POLL_SECONDS) if revoked(offset)), None)
            for phase in range(POLL_SECONDS)
        ]
        hits = [offset for offset in first_revoked if offset is not None]
        expected_earliest = now + min(hits) * SECOND if hits else None
        assert prediction.revoked_at_earliest == expected_earliest

        revoked_by = prediction.revoked_by
        if revoked_by is not None and revoked_by <= horizon:
            for phase, offset in enumerate(first_revoked):
                assert offset is not None, f"phase {phase} never revokes, yet revoked_by is {revoked_by}"
                assert now + offset * SECOND <= revoked_by


@PROPERTY
@given(data=st.data())
def test_usable_intervals_agree_with_assess(data: st.DataObject) -> None:
    """An instant in [now, horizon) lies in a reference's usable intervals exactly when assess finds it usable."""
    scenario = data.draw(scenarios())
    world = World(scenario.snapshot, scenario.changes)
    now, horizon = scenario.now, scenario.effective_horizon
    span = horizon - now
    span_seconds = int(span.total_seconds())
    offsets = st.one_of(
        st.integers(0, span_seconds - 1).map(lambda s: s * SECOND),
        st.integers(0, span // MICROSECOND - 1).map(lambda u: u * MICROSECOND),
    )
    mentioned = _scenario_instants(scenario)
    probes = {t + d for t in mentioned for d in (-SECOND, -MICROSECOND, timedelta(0), MICROSECOND)}
    for namespace in scenario.snapshot.namespaces:
        for ref in namespace.keys:
            intervals = usable_intervals(world, namespace, ref, now, horizon)
            for start, end in intervals:
                assert now <= start < end <= horizon
            for (_, end), (following, _) in pairwise(intervals):
                assert end < following, "intervals must be sorted, disjoint and merged"
            instants = {now + offset for offset in data.draw(st.lists(offsets, min_size=1, max_size=10))}
            instants |= probes
            for start, end in intervals:
                instants |= {start, end - MICROSECOND, end}
            for t in sorted(t for t in instants if now <= t < horizon):
                inside = any(start <= t < end for start, end in intervals)
                assert inside == assess(world, namespace, ref, t).usable, f"at {t.isoformat()}"


@PROPERTY
@given(scenarios(fractional=True))
def test_scenario_document_round_trips(scenario: Scenario) -> None:
    """parse_scenario reads scenario_document's output back to an equal scenario, through JSON and YAML text too."""
    document = scenario_document(scenario)
    for label, decoded in (
        ("document", document),
        ("json", json.loads(json.dumps(document))),
        ("yaml", yaml.safe_load(yaml.safe_dump(document))),
    ):
        parsed, warnings = parse_scenario(decoded)
        assert parsed == scenario, label
        assert warnings == [], label
