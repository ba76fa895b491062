"""Scenario files that once raised something other than ScenarioError: each is now refused with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import VAULT, key, namespace, ref, scenario, simulate


def _fleet(**top: Any) -> dict[str, Any]:
    document = scenario([namespace("sb-one", ref("k1"))], [key("k1")])
    document.update(top)
    return document


@pytest.mark.parametrize(
    ("top", "where"),
    [
        ({"now": "0001-01-01T00:00:00+01:00"}, "$.now: '0001-01-01T00:00:00+01:00' lies outside the years 1 to 9999"),
        ({"now": "9999-12-31T00:00:00Z"}, "$.now: 9999-12-31T00:00:00+00:00 is after the year 8999"),
        ({"now": "8999-12-31T00:00:00Z"}, "$.horizon: 9000-12-31T00:00:00+00:00 is after the year 8999"),
    ],
    ids=["offset-before-year-1", "now-in-9999", "default-horizon-past-8999"],
)
def test_a_time_that_overflowed_is_refused_with_exit_2(tmp_path: Path, top: dict[str, Any], where: str):
    """now in year 9999 overflowed the one-year default horizon (OverflowError, a traceback); now exit 2, named."""
    run = simulate(tmp_path, _fleet(**top))
    assert run.status == 2, run.stderr
    assert where in run.stderr and "Traceback" not in run.stderr


def test_a_what_if_date_in_year_9999_is_refused_with_exit_2(tmp_path: Path):
    """--at 9999-12-31 went through the same overflow."""
    run = simulate(tmp_path, _fleet(), "--at", "9999-12-31T00:00:00Z")
    assert run.status == 2 and "is after the year 8999, the last keyhealth judges" in run.stderr


def test_key_times_far_out_are_still_judged(tmp_path: Path):
    """Only now and the horizon are bounded: a version that expires in 9999 is a plain fact."""
    document = scenario(
        [namespace("sb-one", ref("k1"))],
        [key("k1", {"version": "v1", "created": "0001-01-01T00:00:00Z", "exp": "9999-12-31T23:59:59Z"})],
    )
    run = simulate(tmp_path, document)
    assert run.status == 0, run.stderr
    assert json.loads(run.stdout)["namespaces"][0]["status_now"] == "healthy"


def test_a_vault_uri_with_an_unclosed_ipv6_bracket_is_refused_with_its_path(tmp_path: Path):
    """urlsplit raised ValueError out of the parser; the vault's path is named instead."""
    document = _fleet()
    document["vaults"][0]["uri"] = "https://[::1"
    run = simulate(tmp_path, document)
    assert run.status == 2 and "$.vaults[0].uri: 'https://[::1' is not an https vault URI" in run.stderr


@pytest.mark.parametrize(
    ("filename", "text", "problem"),
    [
        ("deep.json", "[" * 100_000, "$: invalid JSON: nested too deeply"),
        ("bigint.json", '{"now": ' + "1" * 5000 + "}", "$: invalid JSON: Exceeds the limit (4300 digits)"),
        ("deep.yaml", "[" * 10_000, "$: invalid YAML: nested too deeply"),
        ("bigint.yaml", "now: " + "1" * 5000, "$: invalid YAML: Exceeds the limit (4300 digits)"),
        ("baddate.yaml", "now: 2026-13-45\n", "$: invalid YAML: month must be in 1..12"),
    ],
    ids=["json-nested", "json-huge-integer", "yaml-nested", "yaml-huge-integer", "yaml-impossible-date"],
)
def test_a_file_the_decoder_cannot_take_is_refused_with_exit_2(tmp_path: Path, filename: str, text: str, problem: str):
    """RecursionError and ValueError from the JSON and YAML decoders escaped load_scenario; now exit 2, named."""
    run = simulate(tmp_path, text, filename=filename)
    assert run.status == 2, run.stderr
    assert problem in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("op", [["delete_key"], {"op": "delete_key"}])
def test_a_change_whose_op_is_a_list_or_an_object_is_refused_with_its_path(tmp_path: Path, op: object):
    """`op` was looked up in a dict before its type was checked: TypeError (unhashable) instead of exit 2."""
    document = _fleet(changes=[{"at": "2026-11-23T00:00:00Z", "op": op, "vault": VAULT, "key": "k1"}])
    run = simulate(tmp_path, document)
    assert run.status == 2 and "$.changes[0].op: unknown op" in run.stderr


def test_an_error_quotes_a_huge_value_only_in_part(tmp_path: Path):
    """A 5,000-digit `now` was repeated whole; the message keeps its start, the path and the advice at the end."""
    run = simulate(tmp_path, _fleet(now="9" * 5000))
    assert run.status == 2 and len(run.stderr) < 600
    assert "$.now: '9999" in run.stderr and run.stderr.rstrip().endswith("such as 2026-11-22T00:00:00Z")


def test_a_key_listed_with_no_versions_is_missing_not_a_crash(tmp_path: Path):
    """Found by the extended fuzz run: a key without `versions` raised IndexError in the interval arithmetic.
    It has no current version, so the namespace listing it has nothing usable: revoked, key-missing."""
    document = scenario([namespace("sb-one", ref("k1"))], [key("k1")])
    del document["keys"][0]["versions"]
    run = simulate(tmp_path, document)
    assert run.status == 3, run.stderr
    judged = run.namespace("sb-one")
    assert judged["status_now"] == "revoked"
    assert "key-missing" in {f["code"] for f in judged["findings"]}
