"""A `keyhealth serve` SIGKILLed mid-poll keeps the poll lease until it expires: nobody polls meanwhile, and the
other instance's /healthz must say so (503, naming the silent holder), then recover once it takes over."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.app.monitor import POLL_LEASE
from monitor.entry.config import Settings
from monitor.entry.serve import Server
from monitor.sandbox import Sandbox
from tests.hardening.support import TEST_SECRET, parsed
from tests.hardening.test_restarts import Serve, _wait, fleet


def test_healthz_turns_503_while_a_killed_instance_holds_the_poll_lease(tmp_path: Path):
    document = fleet(30, datetime.now(UTC))
    state = tmp_path / "state.sqlite"
    with Sandbox(parsed(document), key_pool=1) as sandbox:
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYHEALTH_")},
            **sandbox.environment(),
            "KEYHEALTH_SQLITE_PATH": str(state),
            "KEYHEALTH_WEBHOOK_SECRET": TEST_SECRET,
            "KEYHEALTH_HTTP_RETRIES": "1",
            "KEYHEALTH_HTTP_TIMEOUT_SECONDS": "10",
        }
        # Instance A: its start-up poll reads slowly, takes the lease, and is killed halfway.
        sandbox.faults.latency = 0.05
        first = Serve.start(environment, tmp_path / "serve.log")
        reads = sandbox.requests.count(service="keyvault")
        _wait(lambda: sandbox.requests.count(service="keyvault") >= reads + 5, "key reads in flight")
        first.kill()
        sandbox.faults.latency = 0.0

        async def instance_b() -> list[tuple[str, int, dict[str, Any]]]:
            seen: list[tuple[str, int, dict[str, Any]]] = []
            settings = Settings.from_environment(environment)
            server = Server.from_settings(settings, now=sandbox.clock.now)
            server._tick = 3600  # the test drives B's clock and its polls
            await server.start("127.0.0.1", 0)
            try:
                record = await server.poll_if_due()
                assert record is not None and record.outcome == "skipped"
                lease = await server.monitor.store.get_lease(POLL_LEASE)
                assert lease is not None and lease.holder != server.monitor.instance
                seen.append(("just after the kill", *await server.health()))
                sandbox.clock.advance(timedelta(minutes=3))  # past two renewals the killed holder never made
                server._fleet_cache = None
                seen.append(("3 minutes on", *await server.health()))
                sandbox.clock.advance(timedelta(minutes=2))  # its lease (4 minutes) has expired: B takes over
                record = await server.poll_if_due()
                assert record is not None and record.outcome == "ok", record
                seen.append(("after B's poll", *await server.health()))
            finally:
                await server.stop()
            return seen

        seen = asyncio.run(instance_b())
    (_, first_code, _), (_, stale_code, stale), (_, last_code, last) = seen
    assert first_code == 200  # the holder was alive a moment ago
    assert stale_code == 503
    assert any("has not renewed it since" in problem for problem in stale["problems"]), stale
    assert stale["poll_lease"]["holder"] != last["last_complete_poll"]["by"]
    assert last_code == 200, last
