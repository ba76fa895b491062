"""Hypothesis profiles for the hardening tests, the figures they report, and hostile JSON values.

Two profiles, both derandomized and without an example database, so every run (and CI) generates the
same inputs: `hardening` for `make test`, and `hardening-extended` (KEYHEALTH_EXTENDED=1, `make
test-extended`) with the counts RELIABILITY.md quotes. A test takes its count from `examples(...)`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXTENDED = os.environ.get("KEYHEALTH_EXTENDED", "").strip() not in {"", "0"}

_COMMON: dict[str, Any] = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "print_blob": False,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("hardening", **_COMMON)
settings.register_profile("hardening-extended", **_COMMON)
PROFILE = settings.get_profile("hardening-extended" if EXTENDED else "hardening")


def examples(default: int, extended: int) -> settings:
    """The hardening profile with this test's example count for the mode the suite runs in."""
    return settings(PROFILE, max_examples=extended if EXTENDED else default)


# --- figures: what each fuzz test generated and how it ended, printed at the end of the run ----------------

FIGURES: dict[str, Counter[str]] = {}


def record(name: str, **counts: int) -> Counter[str]:
    """Add `counts` to the figures of `name` (and return them)."""
    figures = FIGURES.setdefault(name, Counter())
    figures.update(counts)
    return figures


def figures_json() -> str:
    return json.dumps({name: dict(counts) for name, counts in sorted(FIGURES.items())}, indent=2, sort_keys=True)


# --- hostile values -----------------------------------------------------------------------------------------

# Text that stores, logs and JSON encoders choke on, besides whatever hypothesis draws.
NASTY_TEXT = (
    "",
    " ",
    "\t\n",
    "\x00",
    "\ud800",  # a lone surrogate: valid in a Python str (and in JSON as \ud800), not in UTF-8
    "\udfff tail",
    "\u202e",  # right-to-left override
    "é",
    "😀",
    "null",
    "NaN",
    "1e309",
    "https://[::1",
    "https://kv:99999999/keys/k",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "9" * 5000,
    "x" * 20_000,
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(NASTY_TEXT),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def unencodable(value: object) -> bool:
    """True when some text inside `value` cannot be written as UTF-8 (to a log, a store or an HTTP body)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(unencodable(k) or unencodable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(unencodable(v) for v in value)
    return False
