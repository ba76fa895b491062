"""Reading parsed JSON (or YAML) documents: typed getters whose errors name the JSON path of what is
wrong, and instants in the spec's format (RFC 3339, UTC)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from monitor.domain.errors import ScenarioError
from monitor.domain.model import (
    name_id,
)

T = TypeVar("T")


def format_instant(t: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as the scenario format writes times."""
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_instant(value: object, path: str) -> datetime:
    """An ISO 8601 time (a string, or a datetime a YAML loader made); no offset means UTC.

    Raises ScenarioError naming `path` when it is not one.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScenarioError(path, f"{value!r} is not an ISO 8601 time such as 2026-11-22T00:00:00Z") from None
    else:
        raise ScenarioError(
            path, f"expected an ISO 8601 time such as 2026-11-22T00:00:00Z, got {describe_value(value)}"
        )
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # an offset that moves it before year 1 or past 9999 in UTC
        raise ScenarioError(path, f"{value!r} lies outside the years 1 to 9999 in UTC") from None


def describe_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


@dataclass
class DocumentReader:
    """Reads one document, remembering unknown fields as warnings."""

    warnings: list[str] = field(default_factory=list)

    def obj(self, value: object, path: str, known: set[str] | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ScenarioError(path, f"expected an object, got {describe_value(value)}")
        if known is not None:
            for name in value:
                if name not in known:
                    self.warnings.append(f"{path}.{name}: unknown field, ignored")
        return value

    def items(self, parent: Mapping[str, Any], name: str, path: str, *, required: bool = False) -> list[Any]:
        if name not in parent or parent[name] is None:
            if required:
                raise ScenarioError(f"{path}.{name}", "required list is missing")
            return []
        value = parent[name]
        if not isinstance(value, list):
            raise ScenarioError(f"{path}.{name}", f"expected a list, got {describe_value(value)}")
        return value

    def text(self, parent: Mapping[str, Any], name: str, path: str) -> str:
        value = parent.get(name)
        if not isinstance(value, str) or not value.strip():
            problem = "is required" if value is None else f"must be a non-empty string, got {describe_value(value)}"
            raise ScenarioError(f"{path}.{name}", problem)
        return value.strip()

    def optional_text(self, parent: Mapping[str, Any], name: str, path: str) -> str | None:
        value = parent.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ScenarioError(f"{path}.{name}", f"must be a string or null, got {describe_value(value)}")
        return value.strip() or None

    def flag(self, parent: Mapping[str, Any], name: str, path: str, default: bool) -> bool:
        value = parent.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{path}.{name}", f"must be true or false, got {describe_value(value)}")
        return value

    def optional_instant(self, parent: Mapping[str, Any], name: str, path: str) -> datetime | None:
        value = parent.get(name)
        return None if value is None else parse_instant(value, f"{path}.{name}")

    def access(self, parent: Mapping[str, Any], path: str) -> dict[str, frozenset[str]]:
        """An `access` map: principal id -> permission names."""
        access: dict[str, frozenset[str]] = {}
        seen: dict[str, str] = {}
        raw = parent.get("access")
        if raw is not None:
            for principal, permissions in self.obj(raw, f"{path}.access").items():
                entry = f"{path}.access.{principal}"
                check_once(
                    seen, name_id(str(principal)), entry, f"principal {principal!r} (ids compare case-insensitively)"
                )
                access[str(principal).strip()] = frozenset(self.strings(permissions, entry))
        return access

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ScenarioError(path, f"expected a list of strings, got {describe_value(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ScenarioError(f"{path}[{index}]", f"expected a string, got {describe_value(item)}")
        return tuple(item.strip() for item in value)


def check_once(seen: dict[T, str], identity: T, path: str, what: str) -> None:
    if identity in seen:
        raise ScenarioError(path, f"duplicate {what}: already given at {seen[identity]}")
    seen[identity] = path
