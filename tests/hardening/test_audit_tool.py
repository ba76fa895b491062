"""`make audit` runs pip-audit strictly where PyPI's vulnerability service answers, else says why it skipped."""

from __future__ import annotations

import io
import json
import urllib.error
from typing import Any

import pytest

from tools import audit_dependencies


def _never_run(command: list[str]) -> int:
    raise AssertionError(f"pip-audit must not run: {command}")


def test_an_unusable_service_is_reported_as_skipped_with_the_reason(monkeypatch, capsys):
    """A 404 from the per-version JSON API (a mirror without it) is a skip that names the URL and status."""

    def not_found(url: str, timeout: float) -> Any:
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]

    monkeypatch.setattr("urllib.request.urlopen", not_found)
    monkeypatch.setattr("subprocess.call", _never_run)
    assert audit_dependencies.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("pip-audit skipped: ") and "answered HTTP 404" in out


def test_an_unreachable_service_is_reported_as_skipped(monkeypatch, capsys):
    """A name that does not resolve is a skip too, with the resolver's reason."""

    def unresolvable(url: str, timeout: float) -> Any:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", unresolvable)
    monkeypatch.setattr("subprocess.call", _never_run)
    assert audit_dependencies.main() == 0
    assert "unreachable (Name or service not known)" in capsys.readouterr().out


@pytest.mark.parametrize("pip_audit_status", [0, 1])
def test_where_the_service_answers_pip_audit_runs_strictly_and_its_status_is_the_result(
    monkeypatch, pip_audit_status: int
):
    """With the service answering, pip-audit --strict runs over the local environment and a finding fails."""
    ran: list[list[str]] = []

    def answers(url: str, timeout: float) -> Any:
        return io.BytesIO(json.dumps({"info": {}, "vulnerabilities": []}).encode())

    def pip_audit(command: list[str]) -> int:
        ran.append(command)
        return pip_audit_status

    monkeypatch.setattr("urllib.request.urlopen", answers)
    monkeypatch.setattr("subprocess.call", pip_audit)
    assert audit_dependencies.main() == pip_audit_status
    assert ran and ran[0][1:4] == ["-m", "pip_audit", "--strict"]
