"""packed_json writes exactly the JSON json.dumps would, compressed, a batch of list items at a time."""

from __future__ import annotations

import json
import zlib

from bench.fleet_bench import build_fleet
from monitor.adapters.packing import ITEMS_PER_STEP, packed_json
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import Rendered, scenario_document
from tests.adapters.state.support import large_scenario_document


def _dumped(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def test_a_large_document_decompresses_to_exactly_its_json():
    document = large_scenario_document(3 * ITEMS_PER_STEP + 7)
    assert zlib.decompress(packed_json(document)) == _dumped(document)


def test_small_empty_and_unicode_documents_are_their_json():
    documents: list[dict[str, object]] = [{}, {"a": []}, {"list": list(range(ITEMS_PER_STEP + 1)), "ü": "K", "n": None}]
    for document in documents:
        assert zlib.decompress(packed_json(document)) == _dumped(document)


def test_a_lazily_rendered_document_packs_as_its_eager_form():
    scenario, _ = parse_scenario(build_fleet(2 * ITEMS_PER_STEP + 3))
    lazy = scenario_document(scenario, lazy=True)
    assert isinstance(lazy["namespaces"], Rendered) and isinstance(lazy["keys"], Rendered)
    assert zlib.decompress(packed_json(lazy)) == _dumped(scenario_document(scenario))
