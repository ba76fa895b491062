"""Scenario files under generated input: valid scenarios (tests.strategies) written as JSON or YAML, then
edited at random JSON paths with hostile values, cut short or mangled. Loading and judging each one either
succeeds or raises ScenarioError naming a path; nothing else escapes."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from monitor.domain.errors import ScenarioError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.scenario_writing import scenario_document
from monitor.formats.scenario_io import load_scenario
from tests.hardening.fuzzing import NASTY_TEXT, examples, json_values, record
from tests.strategies import scenarios

THRESHOLDS = Thresholds(warning=timedelta(days=30), critical=timedelta(days=7))
TIMES = st.sampled_from(
    [
        "2026-11-22T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31",
        "8999-12-31T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2026-02-30T00:00:00Z",
        "2026-11-22 00:00",
        "yesterday",
    ]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every JSON path inside a document (object keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


def _delete(document: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return document
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return document


@st.composite
def scenario_files(draw: st.DrawFn) -> tuple[str, str]:
    """(file name, text): a valid scenario, then hostile edits, in JSON or YAML."""
    document: Any = scenario_document(draw(scenarios(fractional=True)))
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "time", "delete", "text"]))
        if action == "delete":
            document = _delete(document, path)
        elif action == "time":
            document = _replace(document, path, draw(TIMES))
        elif action == "text":
            document = _replace(document, path, draw(st.sampled_from(NASTY_TEXT)))
        else:
            document = _replace(document, path, draw(json_values))
    as_yaml = draw(st.booleans())
    if as_yaml:
        text = yaml.safe_dump(document, allow_unicode=False)
    else:
        text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 7)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut short
    if draw(st.integers(0, 15)) == 0:
        # Deep nesting for YAML stays shallower: PyYAML's pure-Python scanner is quadratic in the depth.
        deep = "[" * (1_000 if as_yaml else 50_000)
        text = draw(st.sampled_from([deep, "now: " + "7" * 5000, "now: 2026-13-45", "{", "\x00", ""]))
    return ("scenario.yaml" if as_yaml else "scenario.json"), text


@examples(default=150, extended=3_000)
@given(scenario_files())
def test_a_scenario_file_is_judged_or_refused_with_a_path(file: tuple[str, str]):
    """load_scenario then evaluate: a report, or ScenarioError whose path starts at $ or names an option."""
    name, text = file
    figures = record("scenario files", generated=1)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            scenario, _ = load_scenario(path)
            report = evaluate(scenario, THRESHOLDS)
        except ScenarioError as error:
            figures["refused with a path"] += 1
            assert error.path.startswith("$") and error.problem
            assert len(str(error)) < 2000
            return
        except Exception as error:
            figures["unhandled exceptions"] += 1
            raise AssertionError(f"{type(error).__name__}: {error}") from error
    figures["judged"] += 1
    assert len(report.namespaces) == len(scenario.snapshot.namespaces)
