"""Fixtures for the state store tests: one Azurite a session, and a fresh store of each kind a test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.adapters.state.support import Azurite, StoreOpener, sqlite_opener, tables_opener


@pytest.fixture
def sqlite_store(tmp_path: Path) -> StoreOpener:
    """Opens SQLite stores on one fresh file."""
    return sqlite_opener(tmp_path / "state.sqlite")


@pytest.fixture
def prefix() -> str:
    """A fresh table prefix: a test's own set of tables in the session's Azurite."""
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.fixture
def tables_store(azurite: Azurite) -> StoreOpener:
    """Opens Table stores on a fresh set of tables in Azurite (a unique prefix a test)."""
    return tables_opener(azurite, f"t{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "tables"])
def open_store(request: pytest.FixtureRequest) -> StoreOpener:
    """Opens stores of each implementation in turn, all on the same fresh backing within one test."""
    opener: StoreOpener = request.getfixturevalue(f"{request.param}_store")
    return opener
