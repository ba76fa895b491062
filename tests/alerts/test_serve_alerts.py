"""`keyhealth serve` queues alerts in its poll and delivers them from its own loop, woken at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.domain.documents import format_instant
from monitor.domain.scenario import parse_scenario
from monitor.entry.config import Settings
from monitor.entry.serve import Server
from monitor.sandbox import Sandbox
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario, version


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def test_serve_pages_after_its_start_up_poll(tmp_path: Path, receivers: Callable[..., AlertReceiver], ca_bundle: str):
    """A key expiring in 3 days: the start-up poll opens a critical incident and the webhook gets it."""
    receiver = receivers()
    now = datetime.now(UTC).replace(microsecond=0)
    document = scenario(
        [namespace("sb-soon", ref("k1"))],
        [key("k1", version("v1", exp=format_instant(now + timedelta(days=3))))],
        now=format_instant(now),
    )
    parsed, _ = parse_scenario(document)

    async def run() -> dict[str, object]:
        async with Sandbox(parsed) as sandbox:
            bundle = tmp_path / "trusted.pem"
            bundle.write_text(Path(sandbox.ca_path).read_text() + Path(ca_bundle).read_text())
            environment = {
                **sandbox.environment(),
                "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"),
                "KEYHEALTH_CA_BUNDLE": str(bundle),
                "KEYHEALTH_ALERTS": json.dumps({"sinks": {"ops": {"type": "webhook", "url": receiver.url()}}}),
                "KEYHEALTH_DELIVERY_SCHEDULE": "0 0 0 1 1 *",  # yearly: only the wake-up can deliver in time
            }
            server = Server.from_settings(Settings.from_environment(environment), now=sandbox.clock.now)
            url = await server.start("127.0.0.1", 0)
            try:
                for _ in range(200):  # a liveness bound, not a speed target
                    if receiver.accepted and server.deliveries["delivered"]:
                        break
                    await asyncio.sleep(0.05)
                async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as reply:
                    health: dict[str, object] = await reply.json()
                    return health
            finally:
                await server.stop()

    health = asyncio.run(run())
    (hit,) = receiver.accepted
    assert hit.body["notice"] == "open" and hit.body["level"] == "critical"
    assert hit.body["namespace"]["name"] == "sb-soon"
    assert health["alerts"] == {"delivered": 1, "retrying": 0, "undeliverable": 0}
