"""Fixtures shared across test packages: one real Azurite for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.state.support import Azurite


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real azurite-table on a free loopback port for the whole session; fails (never skips) when not installed."""
    running = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield running
    finally:
        running.stop()
