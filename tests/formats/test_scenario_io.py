"""Scenario files are read and written back without loss, in JSON and YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.domain.errors import ScenarioError
from monitor.formats.scenario_io import load_scenario, save_scenario

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.json"


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_the_example_fleet_survives_a_write_and_read(tmp_path, suffix):
    """save_scenario then load_scenario gives back an equal scenario, whatever the format."""
    original, warnings = load_scenario(EXAMPLE)
    assert warnings == []
    target = tmp_path / f"copy{suffix}"
    save_scenario(original, target)
    again, _ = load_scenario(target)
    assert again == original


def test_written_json_uses_the_spec_field_names_and_utc_times(tmp_path):
    """The writer emits the format's fields, with times as ISO 8601 ending in Z."""
    original, _ = load_scenario(EXAMPLE)
    target = tmp_path / "out.json"
    save_scenario(original, target)
    document = json.loads(target.read_text())
    assert set(document) == {"now", "horizon", "vaults", "keys", "namespaces", "changes"}
    assert document["now"] == "2026-11-22T00:00:00Z"
    assert set(document["keys"][0]["versions"][0]) == {
        "version",
        "created",
        "enabled",
        "nbf",
        "exp",
        "key_ops",
        "kty",
        "key_size",
    }
    assert set(document["namespaces"][0]["keys"][0]) == {"vault", "name", "version", "identity"}


def test_a_load_error_names_the_file(tmp_path):
    """Errors raised while loading carry the file's path."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"now": 5}')
    with pytest.raises(ScenarioError) as raised:
        load_scenario(bad)
    assert raised.value.source == str(bad)
    assert raised.value.path == "$.now"
    assert str(raised.value).startswith(f"{bad}: $.now: expected an ISO 8601 time")


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    """Binary junk is refused with the reason, not a decoding traceback."""
    bad = tmp_path / "junk.json"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ScenarioError, match="not UTF-8 text"):
        load_scenario(bad)
