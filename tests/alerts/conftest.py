"""Fixtures for alert tests: a trusted test CA and real HTTPS receivers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.sandbox.certs import Certificates
from tests.alerts.receiver import AlertReceiver


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("alert-ca"))


@pytest.fixture
def ca_bundle(certificates: Certificates) -> str:
    return str(certificates.ca_path)


@pytest.fixture
def receivers(certificates: Certificates) -> Iterator[Callable[..., AlertReceiver]]:
    """Start as many receivers as a test asks for; all are stopped after it."""
    started: list[AlertReceiver] = []

    def start(**options: object) -> AlertReceiver:
        receiver = AlertReceiver(certificates.server_context(), **options)  # type: ignore[arg-type]
        started.append(receiver.__enter__())
        return receiver

    yield start
    for receiver in started:
        receiver.__exit__(None, None, None)


@pytest.fixture
def tmp_state(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"
