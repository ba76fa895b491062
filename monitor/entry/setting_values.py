"""The grammar of each kind of app setting value: numbers in a range, https URLs, files, choices, NCRONTAB,
key patterns, GUIDs; each parser names the setting and what it expected when a value is refused."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from monitor.domain.errors import KeyPatternError, SettingError
from monitor.domain.names import GUID
from monitor.domain.remediation import parse_key_pattern


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is named, defaulted, parsed and described (mirrored in the README)."""

    name: str
    default: str
    description: str
    parse: Callable[[str, str], Any]
    secret: bool = False


def parse_number(low: float, high: float, what: str) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingError(name, raw, f"expected {what}") from None
        if math.isnan(value) or not low <= value <= high:
            raise SettingError(name, raw, f"expected {what} from {low:g} to {high:g}")
        return value

    return parse


def parse_whole(low: int, high: int, what: str) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingError(name, raw, f"expected {what}, a whole number") from None
        if not low <= value <= high:
            raise SettingError(name, raw, f"expected {what} from {low} to {high}")
        return value

    return parse


def parse_https_url(optional: bool) -> Callable[[str, str], str | None]:
    def parse(name: str, raw: str) -> str | None:
        if not raw:
            if optional:
                return None
            raise SettingError(name, raw, "is required")
        try:
            parts = urlsplit(raw)
        except ValueError:  # such as an unclosed IPv6 bracket
            parts = None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise SettingError(name, raw, "expected an https:// URL")
        return raw.rstrip("/")

    return parse


def parse_existing_file(name: str, raw: str) -> str | None:
    if not raw:
        return None
    try:
        found = Path(raw).is_file()
    except OSError as error:  # such as a name too long for the file system, which is_file does not swallow
        raise SettingError(name, raw, f"cannot be read: {error.strerror or error}") from None
    if not found:
        raise SettingError(name, raw, "no such file")
    return raw


def parse_text(name: str, raw: str) -> str | None:
    del name
    return raw or None


def parse_sink_names(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for sink in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", sink):
            raise SettingError(name, raw, f"{sink!r} is not a sink name")
    return names


def parse_subscriptions(name: str, raw: str) -> tuple[str, ...] | None:
    items = tuple(part.strip() for part in raw.replace(";", ",").split(",") if part.strip())
    for item in items:
        if "/" in item or " " in item:
            raise SettingError(name, raw, f"{item!r} is not a subscription id")
    return items or None


def parse_choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise SettingError(name, raw, f"expected one of: {', '.join(allowed)}")
        return value

    return parse


def parse_ncrontab(name: str, raw: str) -> str:
    fields = raw.split()
    if len(fields) != 6:
        raise SettingError(name, raw, "expected an NCRONTAB schedule of 6 fields: second minute hour day month weekday")
    return " ".join(fields)


def parse_patterns(name: str, raw: str) -> tuple[str, ...]:
    del name
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_key_patterns(name: str, raw: str) -> tuple[str, ...]:
    """Each pattern must pin one vault host of a known cloud: refused at start-up, not matched loosely later."""
    patterns = []
    for part in parse_patterns(name, raw):
        try:
            patterns.append(str(parse_key_pattern(part)))
        except KeyPatternError as error:
            raise SettingError(name, raw, f"pattern {error.pattern!r}: {error.problem}") from None
    return tuple(dict.fromkeys(patterns))


def parse_actions(name: str, raw: str) -> frozenset[str]:
    chosen = frozenset(part.strip().lower() for part in raw.split(",") if part.strip())
    unknown = sorted(chosen - {"rotate", "recover", "unpin"})
    if unknown:
        raise SettingError(name, raw, f"unknown action {unknown[0]!r}: expected rotate, recover or unpin")
    return chosen


def parse_tenant(name: str, raw: str) -> str | None:
    if not raw:
        return None
    if not GUID.fullmatch(raw):
        raise SettingError(name, raw, "expected the tenant's id, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47")
    return raw.lower()


def parse_audiences(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in items:
        if not (GUID.fullmatch(item) or re.match(r"^(api|https)://[^\s,]+$", item)):
            raise SettingError(
                name, raw, f"{item!r} is neither an application id (a GUID) nor an api:// or https:// URI"
            )
    return items


def parse_guids(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for item in items:
        if not GUID.fullmatch(item):
            raise SettingError(name, raw, f"{item!r} is not an application or object id (a GUID)")
    return items


def parse_table_prefix(name: str, raw: str) -> str:
    # Table names are ASCII letters and digits; str.isalnum alone would pass 'é' or '٣', which Azure refuses.
    if not (raw.isascii() and raw[:1].isalpha() and raw.isalnum() and len(raw) <= 41):
        raise SettingError(name, raw, "expected a letter then up to 40 letters or digits")
    return raw
