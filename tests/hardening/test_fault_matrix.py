"""The fault matrix: every kind of failure the stand-in can inject, at every place the poll reads from.

Each cell runs four polls of one fleet against the stand-in, in two subscriptions: a clean one, two under the
fault, and a clean one after it cleared. After every poll each namespace's recorded status must be its true
status (what `simulate` predicts from the same scenario) or, only where the fault hides what decides it,
`unknown` with a `monitor-blind` finding. The namespaces the fault hides must be `unknown`, all others their
true status. Alerts are delivered to a local receiver after each poll: every hidden namespace gets exactly
one monitor-blind alert across the two faulty polls (not one per poll) and one resolve once the fault clears,
and no other incident is resolved or raised by the fault.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.app.poll import deliver_alerts, poll
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from monitor.sandbox.faults import FaultRule, Faults
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario, vault, version
from tests.hardening.fuzzing import record
from tests.hardening.support import parsed

SUB1 = "00000000-0000-0000-0000-000000000000"
SUB2 = "11111111-1111-1111-1111-111111111111"
KV_A = "https://kv-a.vault.azure.net"  # access policies, subscription 1
KV_B = "https://kv-b.vault.azure.net"  # RBAC, subscription 1
KV_C = "https://kv-c.vault.azure.net"  # access policies, subscription 2
NOW = "2026-11-22T00:00:00Z"


def _in(subscription: str, name: str, *refs: dict[str, Any]) -> dict[str, Any]:
    document = namespace(name, *refs)
    document["id"] = document["id"].replace(SUB1, subscription)
    return document


def fleet() -> dict[str, Any]:
    """Nine namespaces: healthy, expiring in 3 days and revoked (deleted key) in each access-policy vault, one on
    the RBAC vault, one across both vaults of subscription 1, and one in subscription 2 on a key of subscription 1."""
    return scenario(
        [
            _in(SUB1, "sb-a1", ref("ka1", KV_A)),
            _in(SUB1, "sb-a-soon", ref("ka-soon", KV_A)),
            _in(SUB1, "sb-a-gone", ref("ka-gone", KV_A)),
            _in(SUB1, "sb-b1", ref("kb1", KV_B)),
            _in(SUB1, "sb-ab", ref("ka1", KV_A), ref("kb1", KV_B)),
            _in(SUB2, "sb-c1", ref("kc1", KV_C)),
            _in(SUB2, "sb-c-soon", ref("kc-soon", KV_C)),
            _in(SUB2, "sb-c-gone", ref("kc-gone", KV_C)),
            _in(SUB2, "sb-xc", ref("kc1", KV_C), ref("ka1", KV_A)),
        ],
        [
            key("ka1", vault_uri=KV_A),
            key("ka-soon", version("v1", exp="2026-11-25T00:00:00Z"), vault_uri=KV_A),
            key("ka-gone", deleted=True, vault_uri=KV_A),
            key("kb1", vault_uri=KV_B),
            key("kc1", vault_uri=KV_C),
            key("kc-soon", version("v1", exp="2026-12-10T00:00:00Z"), vault_uri=KV_C),
            key("kc-gone", deleted=True, vault_uri=KV_C),
        ],
        vaults=[
            vault(KV_A),
            vault(KV_B, rbac=True),
            vault(KV_C),
        ],
        now=NOW,
    )


# --- where a fault strikes, and which namespaces it hides --------------------------------------------------

SUB1_ONLY = {"sb-a1", "sb-a-soon", "sb-a-gone", "sb-b1", "sb-ab"}


@dataclass(frozen=True)
class Where:
    name: str
    match: dict[str, Any]  # FaultRule matchers
    hidden: frozenset[str]  # the namespaces the fault must turn unknown
    # Touched by the fault, yet decided by what was read: a deleted key fails its reference whatever the
    # unread vault says. They keep their true status and get the monitor-blind finding (and alert) too.
    decided: frozenset[str] = frozenset()
    # How namespaces are found: the ARM listing's own faults only strike when it is the way (the default,
    # Resource Graph, falls back to it).
    inventory: str = "resource-graph"


WHERES = [
    Where(
        "arm-namespace-listing",
        {"service": "arm", "path": f"/subscriptions/{SUB1}/providers/Microsoft.ServiceBus/namespaces$"},
        frozenset(SUB1_ONLY),
        inventory="arm",
    ),
    # Resource Graph failing costs nothing but the fallback to ARM listing: nothing is hidden.
    Where(
        "resource-graph-query", {"service": "arm", "path": "/providers/Microsoft.ResourceGraph/resources"}, frozenset()
    ),
    Where(
        "arm-vault-read",
        {"service": "arm", "path": f"/subscriptions/{SUB1}/providers/Microsoft.KeyVault/vaults$"},
        frozenset(SUB1_ONLY - {"sb-a-gone"} | {"sb-xc"}),  # kv-a and kv-b live in subscription 1; sb-xc uses kv-a
        decided=frozenset({"sb-a-gone"}),
    ),
    Where("keyvault-key-read", {"service": "keyvault", "vault": KV_A}, frozenset(SUB1_ONLY - {"sb-b1"} | {"sb-xc"})),
    Where("role-assignments", {"service": "arm", "path": "/roleAssignments"}, frozenset({"sb-b1", "sb-ab"})),
    Where(
        "next-link-page",
        {
            "service": "arm",
            "path": f"/subscriptions/{SUB1}/providers/Microsoft.ServiceBus/namespaces$",
            "next_page_only": True,
        },
        frozenset(SUB1_ONLY),
        inventory="arm",
    ),
]


@dataclass(frozen=True)
class Kind:
    name: str
    add: Callable[[Faults, dict[str, Any]], FaultRule]
    retries: int = 1  # KEYHEALTH_HTTP_RETRIES: each failing request is tried this many more times


def _status(status: int, **extra: Any) -> Callable[[Faults, dict[str, Any]], FaultRule]:
    return lambda faults, match: faults.respond(status, **extra, **match)


def _forbidden(faults: Faults, match: dict[str, Any]) -> FaultRule:
    """The monitor's own 403: Key Vault's Forbidden for the data plane, ARM's AuthorizationFailed elsewhere."""
    if match.get("service") == "keyvault":
        return faults.forbid(match["vault"])
    return faults.respond(403, code="AuthorizationFailed", **match)


KINDS = [
    Kind("429-storm-with-retry-after", _status(429, code="TooManyRequests", retry_after=1)),
    Kind("429-storm-without-retry-after", _status(429, code="TooManyRequests")),
    Kind("500", _status(500)),
    Kind("503", _status(503)),
    # One 1-second read timeout per attempt: no retry, so the cell costs seconds, not minutes.
    Kind("timeout", lambda faults, match: faults.hang(seconds=8, **match), retries=0),
    Kind("connection-reset", lambda faults, match: faults.reset(**match)),
    Kind("truncated-json", lambda faults, match: faults.truncate(**match)),
    Kind("403-to-the-monitor", _forbidden),
]


# --- running the cells ---------------------------------------------------------------------------------------------

THRESHOLDS = Thresholds(warning=timedelta(days=30), critical=timedelta(days=7))
SCENARIO = parsed(fleet())
TRUTH = {n.prediction.namespace.name: n.prediction.status_now.value for n in evaluate(SCENARIO, THRESHOLDS).namespaces}


@pytest.fixture(scope="module")
def receiver() -> Iterator[AlertReceiver]:
    """One local alert receiver for the module; each cell posts to its own path."""
    with AlertReceiver(ssl.create_default_context(), plain_http=True) as running:
        yield running


def _statuses(documents: list[dict[str, Any]]) -> dict[str, tuple[str, set[str], str]]:
    """Per namespace: status, finding codes, and the monitor-blind messages."""
    found = {}
    for document in documents:
        codes = {f["code"] for f in document["findings"]}
        blind = " ".join(f["message"] for f in document["findings"] if f["code"] == "monitor-blind")
        found[document["name"]] = (document["status_now"], codes, blind)
    return found


async def run_cell(where: Where, kind: Kind, receiver: AlertReceiver, directory: Path) -> dict[str, int]:
    """One cell on its own stand-in and store; raises AssertionError naming what the monitor got wrong."""
    hook = f"/{where.name}/{kind.name}"
    # key_pool=1: one RSA key shared by every version; generating one per version was most of a cell's time.
    async with Sandbox(SCENARIO, arm_page_size=2, key_pool=1) as sandbox:
        environment = {
            **sandbox.environment(),
            "KEYHEALTH_SQLITE_PATH": str(directory / f"{where.name}-{kind.name}.sqlite"),
            "KEYHEALTH_HTTP_RETRIES": str(kind.retries),
            "KEYHEALTH_HTTP_TIMEOUT_SECONDS": "1",
            "KEYHEALTH_INVENTORY": where.inventory,
            "KEYHEALTH_ALERTS": json.dumps({"sinks": {"pager": {"type": "webhook", "url": receiver.url(hook)}}}),
        }
        monitor = build_monitor(Settings.from_environment(environment))
        t0 = sandbox.clock.now()
        seen: list[dict[str, tuple[str, set[str], str]]] = []

        async def poll_and_deliver(minutes: int) -> list[dict[str, Any]]:
            first = len([h for h in receiver.hits if h.path == hook])
            result = await poll(monitor, now=t0 + timedelta(minutes=minutes))
            assert result.ran and result.report is not None
            seen.append(_statuses([dict(s.document) for s in await monitor.store.list_namespace_states()]))
            await deliver_alerts(monitor, now=t0 + timedelta(minutes=minutes, seconds=30))
            return [json.loads(h.raw) for h in [h for h in receiver.hits if h.path == hook][first:]]

        try:
            await poll_and_deliver(0)
            rule = kind.add(sandbox.faults, where.match)
            under_fault = await poll_and_deliver(5) + await poll_and_deliver(10)
            matched = rule.matched
            sandbox.faults.clear()
            after = await poll_and_deliver(15)
        finally:
            assert monitor.close is not None
            await monitor.close()

    assert matched > 0, "the fault never struck: the cell tests nothing"
    # Before, and after the fault cleared: the whole fleet as simulate predicts it.
    for label, statuses in (("before the fault", seen[0]), ("after it cleared", seen[3])):
        assert {name: status for name, (status, _, _) in statuses.items()} == TRUTH, label
    # Under the fault: hidden namespaces unknown with monitor-blind; the rest true. Never another status.
    for statuses in seen[1:3]:
        for name, (status, codes, blind) in statuses.items():
            if name in where.hidden:
                assert status == "unknown" and "monitor-blind" in codes and blind, (name, status, codes)
            elif name in where.decided:
                assert status == TRUTH[name] and "monitor-blind" in codes, (name, status, codes)
            else:
                assert status == TRUTH[name], (name, status, TRUTH[name])
    # One monitor-blind page per touched namespace across both faulty polls; nothing else moved by the fault.
    touched = where.hidden | where.decided
    pages = sorted((a["namespace"]["name"], a["condition"], a["notice"]) for a in under_fault)
    assert pages == sorted((name, "blind", "open") for name in touched), pages
    # Once it clears: each blind incident resolved once, nothing else.
    resolves = sorted((a["namespace"]["name"], a["condition"], a["notice"]) for a in after)
    assert resolves == sorted((name, "blind", "resolve") for name in touched), resolves
    return {"fault hits": matched, "blind pages": len(pages), "hidden namespaces": len(where.hidden)}


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_a_fault_hides_only_what_it_touches_and_pages_once(kind: Kind, receiver: AlertReceiver, tmp_path: Path):
    """One kind of fault at each of the five places the poll reads from, each cell on its own stand-in (they
    run side by side, so waiting out timeouts and Retry-After costs one cell's time): affected namespaces
    unknown with monitor-blind, the rest true, no lie in between, one blind page each, resolved once."""
    started = time.monotonic()

    async def run() -> list[dict[str, int] | BaseException]:
        cells = [run_cell(where, kind, receiver, tmp_path) for where in WHERES]
        return await asyncio.gather(*cells, return_exceptions=True)

    outcomes = asyncio.run(run())
    failures = []
    for where, outcome in zip(WHERES, outcomes, strict=True):
        cell = f"{where.name} x {kind.name}"
        if isinstance(outcome, BaseException):
            failures.append(f"{cell}: {type(outcome).__name__}: {outcome}")
            record("fault matrix cells", failed=1)
            continue
        record("fault matrix cells", passed=1, **{"faulty polls": 2, **outcome})
    record("fault matrix seconds", **{kind.name: round(time.monotonic() - started)})
    assert not failures, "\n".join(failures)
