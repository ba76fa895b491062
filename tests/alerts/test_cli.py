"""`keyhealth alerts test`: a sample alert straight to the configured sinks, with a clear verdict."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest

from monitor.entry.cli import main
from tests.alerts.receiver import AlertReceiver


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, receivers: Callable[..., AlertReceiver], ca_bundle: str):
    good, bad = receivers(), receivers(status=500)
    config = {
        "sinks": {
            "ops": {"type": "webhook", "url": good.url("/hook"), "secret_setting": "HOOK_SECRET"},
            "pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY", "url": bad.url("/v2/enqueue")},
        }
    }
    monkeypatch.setenv("KEYHEALTH_ALERTS", json.dumps(config))
    monkeypatch.setenv("HOOK_SECRET", "s")
    monkeypatch.setenv("PD_KEY", "PDKEY-never-printed")
    monkeypatch.setenv("KEYHEALTH_CA_BUNDLE", ca_bundle)
    return good, bad


def test_a_named_sink_gets_the_test_alert(configured):
    good, bad = configured
    status, out, err = _run("alerts", "test", "--sink", "ops")
    assert (status, out, err) == (0, "ops (webhook): sent\n", "")
    (hit,) = good.hits
    assert hit.body["test"] is True and hit.body["headline"].startswith("[TEST] ")
    assert bad.hits == []


def test_every_sink_by_default_and_a_failure_exits_1(configured):
    status, out, _ = _run("alerts", "test")
    assert status == 1
    assert out.splitlines() == ["ops (webhook): sent", "pager (pagerduty): FAILED: HTTP 500"]
    assert "PDKEY-never-printed" not in out


def test_an_unknown_sink_or_no_configuration_exits_2(configured, monkeypatch: pytest.MonkeyPatch):
    status, _, err = _run("alerts", "test", "--sink", "teams")
    assert status == 2 and "no sink is named 'teams'; configured: ops, pager" in err
    monkeypatch.delenv("KEYHEALTH_ALERTS")
    status, _, err = _run("alerts", "test")
    assert status == 2 and "no alert sinks are configured" in err


def test_a_bad_configuration_is_named_without_a_traceback(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KEYHEALTH_ALERTS", '{"sinks": {"x": {"type": "sms"}}}')
    status, out, err = _run("alerts", "test")
    assert status == 2 and out == ""
    assert err.startswith("keyhealth: error: setting KEYHEALTH_ALERTS")
    assert "$.sinks.x.type: expected one of: webhook, teams, slack, pagerduty, eventgrid" in err
    assert "Traceback" not in err
