"""Hardening fixtures: the Key Vault challenge cache cleared per test, and the fuzz figures at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from tests.hardening import fuzzing


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    """The Key Vault SDK caches challenges per host:port in a process-global dict; tests must not share them."""
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the fuzz tests generated (and write it to KEYHEALTH_FIGURES_FILE when that is set)."""
    if not fuzzing.FIGURES:
        return
    mode = "extended" if fuzzing.EXTENDED else "default"
    terminalreporter.write_sep("-", f"hardening figures ({mode} mode)")
    for name, counts in sorted(fuzzing.FIGURES.items()):
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    target = os.environ.get("KEYHEALTH_FIGURES_FILE")
    if target:
        Path(target).write_text(fuzzing.figures_json() + "\n", encoding="utf-8")
