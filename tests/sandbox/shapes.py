"""Structural comparison of JSON documents: which paths one has that the other lacks, or types differently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Objects whose keys are data (tag names, identity resource ids): compare their values' shapes only.
MAPS = {"tags", "userAssignedIdentities"}


def fixture(relative: str) -> Any:
    """A published payload from tests/fixtures (copied unchanged, see its SOURCES.md), parsed as it is."""
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def differences(expected: Any, actual: Any, path: str = "$") -> tuple[list[str], list[str]]:
    """(paths `expected` has that `actual` lacks or types differently, paths only `actual` has)."""
    missing: list[str] = []
    extra: list[str] = []
    if kind(expected) != kind(actual):
        return [f"{path} ({kind(expected)} != {kind(actual)})"], []
    if isinstance(expected, dict):
        if path.rsplit(".", 1)[-1] in MAPS:
            if expected and actual:
                sub_missing, sub_extra = differences(
                    next(iter(expected.values())), next(iter(actual.values())), f"{path}.*"
                )
                missing += sub_missing
                extra += sub_extra
            return missing, extra
        for key, value in expected.items():
            if key not in actual:
                missing.append(f"{path}.{key}")
            else:
                sub_missing, sub_extra = differences(value, actual[key], f"{path}.{key}")
                missing += sub_missing
                extra += sub_extra
        extra += [f"{path}.{key}" for key in actual if key not in expected]
    elif isinstance(expected, list) and expected and actual:  # an empty list fits any list
        sub_missing, sub_extra = differences(expected[0], actual[0], f"{path}[0]")
        missing += sub_missing
        extra += sub_extra
    return missing, extra
