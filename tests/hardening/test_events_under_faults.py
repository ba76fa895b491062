"""Key Vault events handled while the vault fails the monitor's reads: the webhook still answers 200 (the event
was handled: what it points at is unknown), the namespace is unknown with monitor-blind (never its stale
`healthy`, never a guessed `revoked`), its blind incident opens once across redeliveries, and once the vault
answers again the next event shows the truth."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.domain.model import DeleteKey
from monitor.sandbox import RateLimit, Sandbox
from tests.builders import key_event
from tests.hardening.fuzzing import EXTENDED, record
from tests.hardening.support import VAULT, fleet_document, serving

NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
FAULTS: list[tuple[str, Callable[[Sandbox], Any], str]] = [
    ("500", lambda s: s.faults.respond(500, service="keyvault", vault=VAULT), "1"),
    ("503", lambda s: s.faults.respond(503, service="keyvault", vault=VAULT), "1"),
    # Without a retry: waiting out Retry-After is shown by the fault matrix; here it would only cost time.
    ("429-storm", lambda s: s.faults.respond(429, service="keyvault", vault=VAULT, retry_after=1), "0"),
    ("timeout", lambda s: s.faults.hang(service="keyvault", vault=VAULT, seconds=5), "0"),
    ("connection-reset", lambda s: s.faults.reset(service="keyvault", vault=VAULT), "1"),
    ("truncated-json", lambda s: s.faults.truncate(service="keyvault", vault=VAULT), "1"),
    ("403-to-the-monitor", lambda s: s.faults.forbid(VAULT), "1"),
]


# The poll's fault matrix covers every kind at every place; events get three kinds by default, all extended.
CHOSEN = FAULTS if EXTENDED else [f for f in FAULTS if f[0] in {"500", "timeout", "403-to-the-monitor"}]


@pytest.mark.parametrize(("kind", "inject", "retries"), CHOSEN, ids=[f[0] for f in CHOSEN])
def test_an_event_during_a_fault_leaves_its_namespace_unknown_and_pages_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, inject: Callable[[Sandbox], Any], retries: str
):
    """k1 is deleted while its vault fails the monitor: three deliveries about k1 (one a redelivery) leave
    sb-one unknown, not healthy and not revoked, with one blind page; after the fault the truth (revoked)."""

    async def run() -> list[tuple[int, dict[str, Any], str]]:
        seen = []
        # Each delivery re-reads (no coalescing window), so that each meets the fault.
        environment = {"KEYHEALTH_HTTP_RETRIES": retries, "KEYHEALTH_EVENT_COALESCE_SECONDS": "0"}
        async with serving(tmp_path, fleet_document(), **environment) as running:
            sandbox = running.sandbox
            sandbox.apply(DeleteKey(at=sandbox.clock.now() - timedelta(seconds=1), vault=VAULT, key="k1"))
            inject(sandbox)
            for event_id in ("e-1", "e-1", "e-2"):
                status, reply = await running.post("/api/events", [key_event(NEW_VERSION, VAULT, "k1", event_id)])
                seen.append((status, reply, (await running.get("/status/sb-one"))[1]["status_now"]))
            sandbox.faults.clear()
            status, reply = await running.post("/api/events", [key_event(NEW_VERSION, VAULT, "k1", "e-3")])
            seen.append((status, reply, (await running.get("/status/sb-one"))[1]["status_now"]))
            document = (await running.get("/status/sb-two"))[1]
            assert document["status_now"] == "healthy"  # never re-read: untouched by the fault
        return seen

    with caplog.at_level(logging.INFO, logger="keyhealth"):
        during_and_after = asyncio.run(run())
    *during, after = during_and_after
    for status, reply, sb_one in during:
        assert status == 200 and reply["failed"] == [], reply
        assert sb_one == "unknown", (kind, sb_one)
    assert [r["outcomes"] for _, r, _ in during] == [{"evaluated": 1}, {"duplicate": 1}, {"evaluated": 1}]
    assert after[0] == 200 and after[2] == "revoked"
    pages = [r.getMessage() for r in caplog.records if "alert open" in r.getMessage() and "sb-one" in r.getMessage()]
    blind_pages = [p for p in pages if "cannot read what decides its keys" in p]
    assert len(blind_pages) == 1, pages
    record("events under faults", cells=1, events=4, **{"blind pages": len(blind_pages)})


def test_key_vaults_rate_limit_is_waited_out_and_never_misread(tmp_path: Path):
    """Key Vault's own throttle (3 requests a second here): reads wait for Retry-After and then read the truth,
    or, past the retries, leave the namespace unknown; never a wrong verdict."""

    async def run() -> list[str]:
        statuses = []
        async with serving(tmp_path, fleet_document()) as running:
            sandbox = running.sandbox
            sandbox.apply(DeleteKey(at=sandbox.clock.now() - timedelta(seconds=1), vault=VAULT, key="k1"))
            sandbox.faults.rate_limit = RateLimit(requests=3, window=1.0)
            for index in range(4):
                status, reply = await running.post("/api/events", [key_event(NEW_VERSION, VAULT, "k1", f"r-{index}")])
                assert status == 200 and reply["failed"] == [], reply
                statuses.append((await running.get("/status/sb-one"))[1]["status_now"])
            throttled = sandbox.requests.count(service="keyvault", status=429)
            record("events under faults", **{"rate-limited events": 4, "429 answers": throttled})
        return statuses

    statuses = asyncio.run(run())
    assert set(statuses) <= {"revoked", "unknown"} and "revoked" in statuses, statuses
