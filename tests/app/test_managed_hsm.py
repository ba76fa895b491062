"""Managed HSM keys read live: the HSM found over ARM (managedHSMs), its keys through the same KeyClient at the
HSM's endpoint, and who may use them from the HSM's own local RBAC (KeyVaultAccessControlClient), all against
the stand-in over HTTPS. The poll is the only signal an HSM gives: it sends no Event Grid events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.app.poll import poll
from monitor.domain.model import DeleteVault, Scenario, SetAccess, SetNetwork
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.builders import (
    ALL_NEEDED,
    NOW,
    SYSTEM_PRINCIPAL,
    USER_IDENTITY,
    USER_PRINCIPAL,
    Run,
    key,
    namespace,
    ref,
    run_cli,
    scenario,
    vault,
    version,
)
from tests.hardening.support import FAST_AZURE, parsed

HSM = "https://hsm-prod.managedhsm.azure.net"
KEY_SCOPED_PRINCIPAL = "00000000-0000-0000-0000-00000000dddd"
LATER = datetime(2026, 11, 21, tzinfo=UTC)


def _hsm_fleet() -> dict[str, Any]:
    return scenario(
        [
            namespace("sb-hsm", ref("k-hsm", vault_uri=HSM)),
            namespace(
                "sb-hsm-user",
                ref("k-hsm", vault_uri=HSM, identity=USER_IDENTITY),
                user_assigned={USER_IDENTITY: USER_PRINCIPAL},
            ),
            # Granted on its key alone: a role assignment at /keys/k-scoped.
            namespace("sb-key-scoped", ref("k-scoped", vault_uri=HSM), principal=KEY_SCOPED_PRINCIPAL),
            namespace("sb-outsider", ref("k-hsm", vault_uri=HSM), principal="p-without-access"),
        ],
        [
            key("k-hsm", version("h1", kty="RSA-HSM"), vault_uri=HSM),
            key("k-scoped", version("s1", kty="RSA-HSM"), vault_uri=HSM, access={KEY_SCOPED_PRINCIPAL: ALL_NEEDED}),
        ],
        vaults=[
            vault(
                HSM,
                rbac=True,
                purge_protection=False,
                access={SYSTEM_PRINCIPAL: ALL_NEEDED, USER_PRINCIPAL: ["all"]},
            )
        ],
    )


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    fleet: Scenario = parse_scenario(_hsm_fleet())[0]
    with Sandbox(fleet) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "1")
        yield running


def _check() -> Run:
    return run_cli("check", "--format", "json", "--at", NOW)


def _statuses(run: Run) -> dict[str, tuple[str, int]]:
    return {n["name"]: (n["status_now"], n["usable_keys_now"]) for n in run.json["namespaces"]}


def test_hsm_keys_are_judged_from_the_hsms_local_role_assignments(sandbox: Sandbox):
    run = _check()
    assert _statuses(run) == {
        "sb-hsm": ("healthy", 1),
        "sb-hsm-user": ("healthy", 1),
        "sb-key-scoped": ("healthy", 1),
        "sb-outsider": ("revoked", 0),
    }
    assert not any(f["code"] == "monitor-blind" for n in run.json["namespaces"] for f in n["findings"])
    outsider = run.namespace("sb-outsider")
    denied = next(f for f in outsider["findings"] if f["code"] == "access-denied")
    # Granted on the HSM's own RBAC, at the key's scope; and said that no event would have told.
    assert "lacks get, unwrapKey, wrapKey on Managed HSM hsm-prod" in denied["message"]
    assert (
        'az keyvault role assignment create --hsm-name hsm-prod --role "Managed HSM Crypto Service Encryption '
        'User" --assignee-object-id p-without-access --assignee-principal-type ServicePrincipal --scope /keys/k-hsm'
    ) in denied["message"]
    assert denied["message"].endswith("a Managed HSM sends no Event Grid events, so only the poll sees this")
    # The HSM was found over ARM, its roles read on its data plane, at / (which lists every scope).
    assert sandbox.requests.select(service="arm", path="/providers/Microsoft.KeyVault/managedHSMs", status=200)
    rbac = sandbox.requests.select(service="keyvault", vault="hsm-prod.managedhsm.azure.net", path="roleAssignments")
    assert rbac and all(r.status == 200 for r in rbac)
    # ARM's role assignments do not reach an HSM's keys: they are not asked.
    assert not sandbox.requests.select(service="arm", path="roleAssignments")


def test_hsm_purge_protection_is_read_from_arms_managed_hsm(sandbox: Sandbox):
    findings = {f["code"]: f for f in _check().namespace("sb-hsm")["findings"]}
    off = findings["vault-purge-protection-off"]
    assert off["message"].startswith("Managed HSM hsm-prod has purge protection off")
    assert "az keyvault update-hsm --hsm-name hsm-prod --enable-purge-protection true" in off["message"]


def test_an_hsm_role_assignment_removed_is_caught_by_the_next_read(sandbox: Sandbox):
    assert _check().namespace("sb-hsm")["status_now"] == "healthy"
    sandbox.apply(SetAccess(at=LATER, vault=HSM, principal=SYSTEM_PRINCIPAL, permissions=frozenset()))
    after = _check().namespace("sb-hsm")
    assert after["status_now"] == "revoked" and after["usable_keys_now"] == 0
    assert "access-denied" in {f["code"] for f in after["findings"]}


def test_an_hsm_the_monitor_may_not_read_the_roles_of_is_unknown_naming_the_role_it_needs(sandbox: Sandbox):
    sandbox.faults.respond(403, code="Forbidden", service="keyvault", path="roleAssignments")
    run = _check()
    for name in ("sb-hsm", "sb-hsm-user", "sb-key-scoped", "sb-outsider"):
        assert run.namespace(name)["status_now"] == "unknown", name
    blind = next(f for f in run.namespace("sb-hsm")["findings"] if f["code"] == "monitor-blind")
    assert "Managed HSM Crypto Auditor" in blind["message"]


def test_an_hsm_firewall_without_the_trusted_services_bypass_blocks_the_service(sandbox: Sandbox):
    sandbox.apply(
        SetNetwork(at=LATER, vault=HSM, default_action="Deny", bypass_azure_services=False, allows_monitor=True)
    )
    hsm = _check().namespace("sb-hsm")
    assert hsm["status_now"] == "revoked"
    assert "vault-firewall-blocks-service" in {f["code"] for f in hsm["findings"]}


def test_a_deleted_hsm_is_known_deleted_not_blind(sandbox: Sandbox):
    sandbox.apply(DeleteVault(at=LATER, vault=HSM))
    hsm = _check().namespace("sb-hsm")
    assert hsm["status_now"] == "revoked"
    assert "monitor-blind" not in {f["code"] for f in hsm["findings"]}
    assert sandbox.requests.select(service="arm", path="/deletedManagedHSMs", status=200)


def test_check_of_an_hsm_fleet_equals_simulate_of_the_same_scenario(sandbox: Sandbox, tmp_path: Path):
    source = tmp_path / "fleet.json"
    source.write_text(json.dumps(_hsm_fleet()))
    simulated = run_cli("simulate", str(source), "--format", "json", "--at", NOW)
    checked = _check()

    def core(run: Run) -> dict[str, object]:
        return {
            n["name"]: (n["status_now"], n["usable_keys_now"], n["revoked_at_earliest"], n["revoked_by"])
            for n in run.json["namespaces"]
        }

    assert core(checked) == core(simulated)


def test_the_poll_on_the_deployed_stores_catches_an_hsm_role_assignment_removed(store_settings: dict[str, str]):
    """As deployed (SQLite and Azurite Table Storage): a first poll reads the HSM's keys and roles; once the
    namespace's role assignment is removed, the next poll (a steady one, revalidating the keys it knows) finds
    the namespace revoked. No event comes between the two: an HSM sends none."""

    async def run() -> list[tuple[str, set[str]]]:
        async with Sandbox(parsed(_hsm_fleet())) as sandbox:
            environment = {**sandbox.environment(), **FAST_AZURE, "KEYHEALTH_HTTP_RETRIES": "0", **store_settings}
            monitor = build_monitor(Settings.from_environment(environment))
            now = sandbox.clock.now()
            seen = []
            try:
                for minutes in (0, 5):
                    if minutes:
                        sandbox.apply(
                            SetAccess(
                                at=now + timedelta(minutes=1),
                                vault=HSM,
                                principal=SYSTEM_PRINCIPAL,
                                permissions=frozenset(),
                            )
                        )
                    sandbox.clock.set(now + timedelta(minutes=minutes))
                    result = await poll(monitor, now=now + timedelta(minutes=minutes))
                    assert result.ran and result.report is not None
                    hsm = next(n for n in result.report.namespaces if n.prediction.namespace.name == "sb-hsm")
                    seen.append((hsm.prediction.status_now.value, {f.code.value for f in hsm.findings}))
            finally:
                assert monitor.close is not None
                await monitor.close()
        return seen

    first, second = asyncio.run(run())
    assert first[0] == "healthy" and "access-denied" not in first[1]
    assert second[0] == "revoked" and "access-denied" in second[1]
