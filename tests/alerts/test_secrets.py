"""Planted secrets (webhook URL tokens, the signing secret, a PagerDuty routing key, an Event Grid key)
never reach the logs, even when every sink fails and echoes back what it was sent."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.entry.config import Settings
from tests.alerts.receiver import AlertReceiver
from tests.alerts.test_delivery import Harness

T0 = datetime(2026, 11, 22, tzinfo=UTC)
SECRETS = {
    "SLACK_URL_TOKEN": "xoxSLACKTOKENs3cr3t",
    "TEAMS_URL_TOKEN": "TEAMSSIGs3cr3t",
    "HOOK_SECRET": "HMACs3cr3tvalue",
    "PD_KEY": "PDROUTINGs3cr3t000000000000000000",
    "EG_KEY": "EVENTGRIDs3cr3tkey",
}


def _environment(receiver: AlertReceiver) -> dict[str, str]:
    config = {
        "sinks": {
            "slack": {"type": "slack", "url_setting": "SLACK_URL"},
            "teams": {"type": "teams", "url_setting": "TEAMS_URL"},
            "hook": {"type": "webhook", "url": receiver.url("/hook"), "secret_setting": "HOOK_SECRET"},
            "pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY", "url": receiver.url("/v2/enqueue")},
            "events": {"type": "eventgrid", "endpoint": receiver.url("/api/events"), "key_setting": "EG_KEY"},
        }
    }
    return {
        "KEYHEALTH_ALERTS": json.dumps(config),
        "SLACK_URL": receiver.url(f"/services/T0/B0/{SECRETS['SLACK_URL_TOKEN']}"),
        "TEAMS_URL": receiver.url(f"/workflows/run?sig={SECRETS['TEAMS_URL_TOKEN']}"),
        "HOOK_SECRET": SECRETS["HOOK_SECRET"],
        "PD_KEY": SECRETS["PD_KEY"],
        "EG_KEY": SECRETS["EG_KEY"],
    }


def test_no_secret_reaches_the_logs_when_every_sink_fails(
    tmp_path: Path, receivers: Callable[..., AlertReceiver], ca_bundle: str, caplog: pytest.LogCaptureFixture
):
    receiver = receivers(status=500, echo=True)
    environment = _environment(receiver)

    async def run() -> list[str]:
        settings = Settings.from_environment(environment)
        texts = [repr(settings), repr(settings.alert_config)]
        harness = Harness(tmp_path / "s.sqlite", environment["KEYHEALTH_ALERTS"], ca_bundle, environ=environment)
        texts += [repr(sink) for sink in harness.sinks.sinks.values()]
        await harness.raise_at(T0, {"sb-a": T0 + timedelta(days=3)})
        texts.append((await harness.deliver(T0)).describe())
        texts += [entry.last_error or "" for entry in await harness.store.list_outbox()]
        receiver.__exit__(None, None, None)  # now nothing answers at all
        texts.append((await harness.deliver(T0 + timedelta(hours=1))).describe())
        texts.append((await harness.deliver(T0 + timedelta(hours=25))).describe())  # given up: logged
        await harness.close()
        return texts

    with caplog.at_level(logging.DEBUG):
        texts = asyncio.run(run())
    captured = caplog.text + "\n".join(texts)
    assert len(receiver.hits) == 5  # every sink was tried, and each echoed its request back
    assert "undeliverable" in caplog.text and "HTTP 500" in caplog.text
    leaked = [name for name, secret in SECRETS.items() if secret in captured]
    assert leaked == []


def test_a_missing_secret_setting_is_named_without_any_value():
    """A sink naming an unset app setting fails startup with the setting's name and the JSON path."""
    config = {"sinks": {"pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY"}}}
    with pytest.raises(Exception) as failure:
        Settings.from_environment({"KEYHEALTH_ALERTS": json.dumps(config)})
    assert "KEYHEALTH_ALERTS" in str(failure.value)
    assert "$.sinks.pager.routing_key_setting: the app setting PD_KEY is not set or empty" in str(failure.value)
