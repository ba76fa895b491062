"""Fixtures for the sandbox tests: a running sandbox on the test scenario, with the Key Vault challenge cache clear."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.sandbox import Sandbox
from tests.sandbox.world import scenario


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    """The Key Vault SDK caches challenges per host:port in a process-global dict; tests must not share them."""
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox serving the test scenario, its clock at the scenario's now."""
    with Sandbox(scenario()) as running:
        yield running
