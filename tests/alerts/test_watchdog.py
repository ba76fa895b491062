"""The optional Watchdog: after complete polls, one always-firing notice per interval across instances, to the
named sinks only, severity info at PagerDuty; never after a blind poll; off by default."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.app.monitor import Monitor
from monitor.app.poll import deliver_alerts, poll
from monitor.domain.errors import SettingError
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario
from tests.hardening.support import FAST_AZURE, parsed

LISTING = "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.ServiceBus/namespaces$"


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _environment(sandbox: Sandbox, tmp_path: Path, ca_bundle: str, hook: str, pager: str) -> dict[str, str]:
    bundle = tmp_path / "trusted.pem"
    bundle.write_text(Path(sandbox.ca_path).read_text() + Path(ca_bundle).read_text())
    alerts = {
        "sinks": {
            "oncall": {"type": "webhook", "url": hook},
            "heartbeat": {"type": "pagerduty", "routing_key_setting": "PD_KEY", "url": pager},
        }
    }
    return {
        **sandbox.environment(),
        **FAST_AZURE,
        "KEYHEALTH_CA_BUNDLE": str(bundle),
        "KEYHEALTH_ALERTS": json.dumps(alerts),
        "PD_KEY": "R0UTINGKEY0123456789012345678901",
        "KEYHEALTH_WATCHDOG_SINKS": "heartbeat",
        "KEYHEALTH_WATCHDOG_MINUTES": "60",
    }


def _monitor(environment: dict[str, str], instance: str) -> Monitor:
    return dataclasses.replace(build_monitor(Settings.from_environment(environment)), instance=instance)


def test_the_watchdog_fires_once_an_interval_across_instances_and_not_when_blind(
    tmp_path: Path, receivers: Callable[..., AlertReceiver], ca_bundle: str, store_settings: dict[str, str]
):
    oncall, pager = receivers(), receivers()
    document = scenario([namespace("sb-one", ref("k1")), namespace("sb-two", ref("k2"))], [key("k1"), key("k2")])

    async def run() -> None:
        async with Sandbox(parsed(document)) as sandbox:
            environment = {
                **_environment(sandbox, tmp_path, ca_bundle, oncall.url("/hook"), pager.url("/v2/enqueue")),
                **store_settings,
            }
            first, second = _monitor(environment, "instance-a"), _monitor(environment, "instance-b")
            t0 = sandbox.clock.now()
            try:
                await poll(first, now=t0)  # a complete poll: the first Watchdog
                await poll(second, now=t0 + timedelta(minutes=5))  # another instance, inside the hour: none
                await poll(first, now=t0 + timedelta(minutes=30))  # inside the hour: none
                sandbox.faults.respond(500, service="arm", path=LISTING)
                sandbox.faults.respond(500, service="arm", path="/providers/Microsoft.ResourceGraph/resources")
                blind = await poll(second, now=t0 + timedelta(minutes=65))  # fleet-blind: no Watchdog
                assert blind.report is not None and blind.report.fleet_blind
                sandbox.faults.clear()
                await poll(second, now=t0 + timedelta(minutes=70))  # complete again, the hour is up: the second
                await deliver_alerts(first, now=t0 + timedelta(minutes=71))
            finally:
                for monitor in (first, second):
                    assert monitor.close is not None
                    await monitor.close()

    asyncio.run(run())
    # The pager also hears of the blind poll's incidents (the routes send everything everywhere here).
    beats: list[dict[str, Any]] = [
        hit.body for hit in pager.accepted if hit.body["dedup_key"].startswith("keyhealth:watchdog")
    ]
    assert len(beats) == 2
    for beat in beats:
        assert beat["event_action"] == "trigger" and beat["payload"]["severity"] == "info"
        assert beat["dedup_key"] == "keyhealth:watchdog:keyhealth/watchdog"
        assert beat["payload"]["summary"].startswith("[WATCHDOG] keyhealth is polling: 2 namespaces")
    assert not [hit for hit in oncall.accepted if hit.body["notice"] == "watchdog"]  # only the named sinks


def test_the_watchdog_is_off_by_default_and_refuses_unknown_sinks(tmp_path: Path):
    assert Settings.from_environment({}).alert_policy.watchdog_sinks == ()
    with pytest.raises(SettingError, match=r"KEYHEALTH_WATCHDOG_SINKS.*does not define: nowhere"):
        Settings.from_environment({"KEYHEALTH_WATCHDOG_SINKS": "nowhere"})
