"""Scenario files on disk: JSON, or YAML where the name ends in .yaml/.yml."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from monitor.domain.errors import ScenarioError
from monitor.domain.model import Scenario
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document

YAML_SUFFIXES = {".yaml", ".yml"}


def load_scenario(path: Path) -> tuple[Scenario, list[str]]:
    """Read and validate a scenario file; also return warnings about ignored fields.

    Raises ScenarioError naming the file, the JSON path and the problem.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError("$", "file not found", source=source) from None
    except IsADirectoryError:
        raise ScenarioError("$", "is a directory, not a scenario file", source=source) from None
    except UnicodeDecodeError as error:
        raise ScenarioError("$", f"not UTF-8 text ({error.reason} at byte {error.start})", source=source) from None
    except OSError as error:
        raise ScenarioError("$", f"cannot read: {error.strerror}", source=source) from None
    try:
        document = _decode(text, yaml_file=path.suffix.lower() in YAML_SUFFIXES)
        return parse_scenario(document)
    except ScenarioError as error:
        raise error.with_source(source) from None


def _decode(text: str, *, yaml_file: bool) -> object:
    if yaml_file:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ScenarioError("$", f"invalid YAML{where}: {problem}") from None
        except RecursionError:
            raise ScenarioError("$", "invalid YAML: nested too deeply") from None
        except ValueError as error:  # a date such as 2026-13-45, or an integer past Python's digit limit
            raise ScenarioError("$", f"invalid YAML: {str(error)[:120]}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ScenarioError("$", f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise ScenarioError("$", "invalid JSON: nested too deeply") from None
    except ValueError as error:  # an integer past Python's 4,300-digit limit
        raise ScenarioError("$", f"invalid JSON: {str(error)[:120]}") from None


def save_scenario(scenario: Scenario, path: Path) -> None:
    """Write a scenario in the format its file name asks for (JSON unless .yaml/.yml)."""
    document = scenario_document(scenario)
    if path.suffix.lower() in YAML_SUFFIXES:
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
