"""scenario_subset: a stored snapshot cut down to the namespaces an event touches parses to exactly those
namespaces, with the keys and vaults they list, as the whole snapshot does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.domain.errors import ScenarioError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.scenario import parse_scenario, scenario_subset

FLEET = Path(__file__).resolve().parents[2] / "examples" / "fleet.json"


def test_a_subset_parses_to_the_chosen_namespaces_and_judges_them_as_the_whole():
    document = json.loads(FLEET.read_text())
    whole, _ = parse_scenario(document)
    chosen = list(whole.snapshot.namespaces)[::2]
    wanted = {n.id.upper().lower() for n in chosen}
    part, _ = parse_scenario(scenario_subset(document, wanted))
    assert [n.id for n in part.snapshot.namespaces] == [n.id for n in chosen]
    listed = {ref.key_id for n in chosen for ref in n.keys}
    assert {k.id for k in part.snapshot.keys} == {k.id for k in whole.snapshot.keys if k.id in listed}
    assert {v.id for v in part.snapshot.vaults} == {ref.key_id[0] for n in chosen for ref in n.keys}
    judged = {n.prediction.namespace.id: n for n in evaluate(whole, Thresholds()).namespaces}
    for namespace in evaluate(part, Thresholds()).namespaces:
        expected = judged[namespace.prediction.namespace.id]
        assert namespace.prediction == expected.prediction and namespace.findings == expected.findings


def test_a_malformed_entry_is_kept_for_the_parser_to_refuse():
    document = json.loads(FLEET.read_text())
    document["namespaces"].append("not a namespace")
    with pytest.raises(ScenarioError, match=r"\$\.namespaces\[0\]"):
        parse_scenario(scenario_subset(document, set()))
