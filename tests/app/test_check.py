"""`keyhealth check`: the real Azure SDK clients read the stand-in over HTTPS, and the monitor tells the truth."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.domain.documents import format_instant
from monitor.domain.model import DeleteKey, Scenario, SetAccess
from monitor.domain.scenario import parse_scenario
from monitor.formats.scenario_io import load_scenario, save_scenario
from monitor.sandbox import Sandbox
from tests.builders import (
    ALL_NEEDED,
    NOW,
    SYSTEM_PRINCIPAL,
    USER_IDENTITY,
    USER_PRINCIPAL,
    VAULT,
    Run,
    key,
    namespace,
    ref,
    run_cli,
    scenario,
    vault,
    version,
)

OTHER_VAULT = "https://kv-other.vault.azure.net"
RBAC_VAULT = "https://kv-rbac.vault.azure.net"


def _fleet() -> dict[str, Any]:
    """A small fleet with one namespace for each thing a live read must get right."""
    return scenario(
        [
            namespace("sb-healthy", ref("k-main"), ref("k-other", vault_uri=OTHER_VAULT)),
            namespace("sb-expiring", ref("k-expiring")),
            namespace("sb-deleted", ref("k-deleted")),
            namespace("sb-pinned", ref("k-main", version_id="v1")),
            namespace(
                "sb-user",
                ref("k-rbac", vault_uri=RBAC_VAULT, identity=USER_IDENTITY),
                user_assigned={USER_IDENTITY: USER_PRINCIPAL},
            ),
            namespace("sb-denied", ref("k-other", vault_uri=OTHER_VAULT), principal="p-without-access"),
            namespace("sb-missing", ref("k-never-created")),
            namespace("sb-disabled", ref("k-disabled")),
        ],
        [
            key("k-main", version("v1", exp="2027-06-01T00:00:00Z"), version("v2", created="2026-10-01T00:00:00Z")),
            key("k-other", version("o1", key_ops=["wrapKey", "unwrapKey"]), vault_uri=OTHER_VAULT),
            key("k-expiring", version("e1", exp="2026-11-25T00:00:00Z")),
            key("k-deleted", deleted=True),
            key("k-rbac", version("r1"), vault_uri=RBAC_VAULT),
            key("k-disabled", version("d1"), version("d2", created="2026-11-01T00:00:00Z", enabled=False)),
        ],
        vaults=[
            vault(),
            vault(OTHER_VAULT, purge_protection=False),
            vault(RBAC_VAULT, rbac=True, access={USER_PRINCIPAL: ["get", "wrapKey", "unwrapKey"]}),
        ],
        changes=[
            {
                "at": "2026-11-01T00:00:00Z",
                "op": "update_version",
                "vault": VAULT,
                "key": "k-main",
                "version": "v1",
                "exp": "2027-05-01T00:00:00Z",
            }
        ],
    )


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    """The Key Vault SDK caches challenges per host in a process-global dict; tests must not share them."""
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> Scenario:
    """The fleet above, or the scenario document a test gives by parametrizing `fleet` indirectly."""
    parsed, _ = parse_scenario(getattr(request, "param", None) or _fleet())
    return parsed


@pytest.fixture
def sandbox(fleet: Scenario, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """The stand-in serving the fleet, with the environment pointing keyhealth at it."""
    with Sandbox(fleet) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "1")
        yield running


def _check(*extra: str) -> Run:
    return run_cli("check", "--format", "json", "--at", NOW, *extra)


def _core(run: Run) -> dict[str, tuple[object, ...]]:
    """What a prediction says per namespace, without the prose."""
    return {
        n["name"]: (
            n["status_now"],
            n["usable_keys_now"],
            n["keys_total"],
            n["revoked_at_earliest"],
            n["revoked_by"],
            sorted((f["code"], f["severity"], f["key"]) for f in n["findings"]),
        )
        for n in run.json["namespaces"]
    }


def test_check_sees_what_simulate_predicts_from_the_same_state(sandbox: Sandbox, fleet: Scenario, tmp_path: Path):
    """Reading the stand-in gives, namespace by namespace, the prediction simulate gives for its scenario."""
    checked = _check()
    expected_file = tmp_path / "expected.json"
    save_scenario(fleet, expected_file)
    simulated = run_cli("simulate", str(expected_file), "--format", "json")
    assert _core(checked) == _core(simulated)
    assert checked.status == simulated.status == 3
    by_name = {n["name"]: n for n in checked.json["namespaces"]}
    assert by_name["sb-healthy"]["status_now"] == "healthy"
    assert by_name["sb-deleted"]["status_now"] == "revoked"
    assert {f["code"] for f in by_name["sb-deleted"]["findings"]} >= {"key-deleted"}
    assert by_name["sb-expiring"]["revoked_at_earliest"] == "2026-11-25T00:00:00Z"
    assert by_name["sb-user"]["status_now"] == "healthy"  # RBAC role assignment resolved to permissions
    assert "access-denied" in {f["code"] for f in by_name["sb-denied"]["findings"]}
    assert "new-version-unusable" in {f["code"] for f in by_name["sb-disabled"]["findings"]}


def test_a_saved_check_replays_to_the_same_prediction(sandbox: Sandbox, tmp_path: Path):
    """check --save writes a scenario that simulate turns into the same prediction."""
    saved = tmp_path / "saved.json"
    checked = _check("--save", str(saved))
    assert "saved what was read" in checked.stderr
    replayed = run_cli("simulate", str(saved), "--format", "json")
    assert _core(replayed) == _core(checked)
    document = json.loads(saved.read_text())
    assert "changes" not in document
    assert document["now"] == NOW


def test_the_clock_passing_a_change_shows_in_the_next_check(sandbox: Sandbox):
    """When the stand-in's clock passes a planned change, a later check sees the new state."""
    sandbox.apply(DeleteKey(at=datetime(2026, 11, 22, 1, tzinfo=UTC), vault=VAULT, key="k-main"))
    before = {n["name"]: n for n in _check().json["namespaces"]}
    assert before["sb-pinned"]["status_now"] == "healthy"
    sandbox.clock.advance(timedelta(hours=2))
    later = run_cli("check", "--format", "json", "--at", "2026-11-22T02:00:00Z")
    after = {n["name"]: n for n in later.json["namespaces"]}
    assert after["sb-pinned"]["status_now"] == "revoked"
    assert after["sb-healthy"]["status_now"] == "degraded"


def test_a_vault_that_answers_the_monitor_403_makes_its_namespaces_unknown(sandbox: Sandbox):
    """The monitor's own 403 is never a usability fact: unknown with monitor-blind, and a non-zero exit."""
    sandbox.faults.forbid(OTHER_VAULT)
    run = _check()
    by_name = {n["name"]: n for n in run.json["namespaces"]}
    healthy_before = by_name["sb-healthy"]
    assert healthy_before["status_now"] == "unknown"
    assert healthy_before["revoked_at_earliest"] is None
    blind = [f for f in healthy_before["findings"] if f["code"] == "monitor-blind"]
    assert blind and "HTTP 403 Forbidden" in blind[0]["message"]
    # What ARM showed still counts: a principal without access fails rule 2 whatever the key is.
    denied = by_name["sb-denied"]
    assert denied["status_now"] == "revoked"
    assert {"access-denied", "monitor-blind"} <= {f["code"] for f in denied["findings"]}
    assert by_name["sb-expiring"]["status_now"] == "healthy"  # the rest is judged as usual
    assert run.status == 3
    assert {"scope": "key", "target": f"{OTHER_VAULT}/keys/k-other"}.items() <= run.json["blind"][0].items()


def test_a_key_read_that_times_out_is_unknown_not_revoked(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch):
    """A hanging key read, past the timeout and its retries, leaves the namespace unknown."""
    monkeypatch.setenv("KEYHEALTH_HTTP_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "0")
    sandbox.faults.hang(service="keyvault", path="/keys/k-expiring", seconds=5)
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    assert by_name["sb-expiring"]["status_now"] == "unknown"
    assert (
        "no response" in next(f for f in by_name["sb-expiring"]["findings"] if f["code"] == "monitor-blind")["message"]
    )
    assert by_name["sb-deleted"]["status_now"] == "revoked"


@pytest.mark.parametrize("fault", ["server-error", "reset"])
def test_transient_key_faults_are_retried_then_read(sandbox: Sandbox, fault: str):
    """A 503 or a reset connection once, then a good answer: the key is read normally."""
    if fault == "server-error":
        sandbox.faults.respond(503, service="keyvault", path="/keys/k-expiring", times=1)
    else:
        sandbox.faults.reset(service="keyvault", path="/keys/k-expiring", times=1)
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    assert by_name["sb-expiring"]["status_now"] == "healthy"


def test_a_pinned_version_answered_by_a_foreign_404_is_unknown_not_missing(sandbox: Sandbox):
    """Only Key Vault's own KeyNotFound says a pinned version is gone: a 404 with another code (a proxy, a wrong
    endpoint) says nothing about the key, so its namespaces are unknown, never revoked for a missing version."""
    sandbox.faults.respond(404, code="NotFound", service="keyvault", path="^/keys/k-main/v1")
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    pinned = by_name["sb-pinned"]
    assert pinned["status_now"] == "unknown"
    blind = next(f for f in pinned["findings"] if f["code"] == "monitor-blind")
    assert "404" in blind["message"]
    # The key's read is incomplete, so what else lists it is unknown too; other keys are judged as usual.
    assert by_name["sb-healthy"]["status_now"] == "unknown"
    assert by_name["sb-expiring"]["status_now"] == "healthy"


def test_a_pinned_version_key_vault_says_is_not_found_is_judged_missing(sandbox: Sandbox):
    """Key Vault's own KeyNotFound for a pinned version is a fact the domain judges (the version is gone)."""
    sandbox.faults.respond(404, code="KeyNotFound", service="keyvault", path="^/keys/k-main/v1")
    pinned = {n["name"]: n for n in _check().json["namespaces"]}["sb-pinned"]
    assert pinned["status_now"] == "revoked"
    assert "monitor-blind" not in {f["code"] for f in pinned["findings"]}


def test_a_truncated_answer_is_unknown(sandbox: Sandbox):
    """A body cut short cannot be believed: the key is unknown, never healthy or revoked."""
    sandbox.faults.truncate(service="keyvault", path="/keys/k-expiring")
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    assert by_name["sb-expiring"]["status_now"] == "unknown"
    blind = next(f for f in by_name["sb-expiring"]["findings"] if f["code"] == "monitor-blind")
    assert "unreadable response" in blind["message"]


def test_throttling_honours_retry_after(sandbox: Sandbox):
    """A 429 with Retry-After is waited out and retried, not reported."""
    sandbox.faults.respond(429, service="keyvault", path="/keys/k-expiring", retry_after=1, times=1)
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    assert by_name["sb-expiring"]["status_now"] == "healthy"
    throttled = sandbox.requests.select(service="keyvault", status=429)
    assert len(throttled) == 1


def test_persistent_server_errors_make_the_key_unknown(sandbox: Sandbox):
    """A 500 that outlives the retries is the monitor's blindness, never a verdict."""
    sandbox.faults.respond(500, service="keyvault", path="/keys/k-expiring")
    by_name = {n["name"]: n for n in _check().json["namespaces"]}
    assert by_name["sb-expiring"]["status_now"] == "unknown"


def test_an_unlistable_subscription_is_reported_and_fails_the_run(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch):
    """When ARM refuses to list a subscription's namespaces, the run says so and exits non-zero."""
    monkeypatch.setenv("KEYHEALTH_INVENTORY", "arm")
    sandbox.faults.respond(
        403, service="arm", path="/providers/Microsoft.ServiceBus/namespaces", code="AuthorizationFailed"
    )
    run = _check()
    assert run.json["namespaces"] == []
    assert run.json["blind"][0]["scope"] == "subscription"
    assert "AuthorizationFailed" in run.json["blind"][0]["reason"]
    assert run.status == 3


RESOURCE_GRAPH = "/providers/Microsoft.ResourceGraph/resources"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
# The subscription's namespace listing (not a namespace's own paths, such as its disasterRecoveryConfigs).
NAMESPACE_LISTING = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.ServiceBus/namespaces"


def test_the_inventory_is_one_resource_graph_query_not_a_listing_per_subscription(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
):
    """By default the namespaces come from Resource Graph; ARM's namespace listing is not asked."""
    resource_graph = run_cli("check", "--format", "json", "--at", NOW)
    assert [r.method for r in sandbox.requests.select(service="arm", path=RESOURCE_GRAPH)] == ["POST"]
    assert sandbox.requests.select(service="arm", path=NAMESPACE_LISTING) == []
    monkeypatch.setenv("KEYHEALTH_INVENTORY", "arm")
    listed = run_cli("check", "--format", "json", "--at", NOW)
    assert len(sandbox.requests.select(service="arm", path=NAMESPACE_LISTING)) == 1
    assert _core(resource_graph) == _core(listed)


def test_resource_graph_refused_falls_back_to_arm_listing(sandbox: Sandbox):
    """A 403 from Resource Graph (no permission there) costs nothing but the fallback: same predictions."""
    sandbox.faults.respond(403, service="arm", path=RESOURCE_GRAPH, code="AuthorizationFailed")
    run = _check()
    assert "blind" not in run.json  # present only when something could not be read
    assert len(run.json["namespaces"]) == 8
    assert len(sandbox.requests.select(service="arm", path=NAMESPACE_LISTING)) == 1


def test_resource_graph_and_arm_both_failing_leave_the_subscription_blind(sandbox: Sandbox):
    sandbox.faults.respond(503, service="arm", path=RESOURCE_GRAPH, code="ServiceUnavailable")
    sandbox.faults.respond(
        403, service="arm", path="/providers/Microsoft.ServiceBus/namespaces", code="AuthorizationFailed"
    )
    run = _check()
    assert run.json["namespaces"] == [] and run.status == 3
    assert [b["scope"] for b in run.json["blind"]] == ["subscription"]


def test_a_subscription_the_identity_cannot_see_is_blind_not_empty(sandbox: Sandbox):
    """Resource Graph says nothing of a subscription it cannot read: the monitor must not call it empty."""
    run = _check("--subscription", "11111111-1111-1111-1111-111111111111", "--subscription", SUBSCRIPTION)
    assert len(run.json["namespaces"]) == 8
    (blind,) = run.json["blind"]
    assert blind["target"] == "11111111-1111-1111-1111-111111111111"
    assert "not visible" in blind["reason"] and run.status == 3


def test_each_shared_key_is_read_once(sandbox: Sandbox):
    """k-main is listed by two namespaces and k-other by two: each current version is fetched once."""
    _check()
    current_reads = [
        r
        for r in sandbox.requests.select(service="keyvault", method="GET")
        if r.path.rstrip("/").endswith("/keys/k-main") or r.path.rstrip("/").endswith("/keys/k-other")
    ]
    assert len([r for r in current_reads if r.status == 200]) == 2


def test_namespaces_without_customer_managed_keys_are_ignored(sandbox: Sandbox, fleet: Scenario):
    """Standard-tier namespaces and Premium ones with Microsoft-managed keys are not part of the fleet."""
    subscription = fleet.snapshot.namespaces[0].id.split("/")[2]
    base = f"/subscriptions/{subscription}/resourceGroups/rg-x/providers/Microsoft.ServiceBus/namespaces"
    sandbox.add_namespace(
        {
            "id": f"{base}/sb-standard",
            "name": "sb-standard",
            "location": "westeurope",
            "sku": {"name": "Standard", "tier": "Standard"},
            "properties": {},
        }
    )
    sandbox.add_namespace(
        {
            "id": f"{base}/sb-mmk",
            "name": "sb-mmk",
            "location": "westeurope",
            "sku": {"name": "Premium", "tier": "Premium", "capacity": 1},
            "properties": {"encryption": {"keySource": "Microsoft.KeyVault"}},
        }
    )
    names = {n["name"] for n in _check().json["namespaces"]}
    assert "sb-standard" not in names and "sb-mmk" not in names
    assert "sb-healthy" in names


def test_subscriptions_can_be_named(sandbox: Sandbox, fleet: Scenario):
    """--subscription limits the scan; one ARM does not know is reported, not silently empty."""
    subscription = fleet.snapshot.namespaces[0].id.split("/")[2]
    named = _check("--subscription", subscription)
    assert len(named.json["namespaces"]) == len(fleet.snapshot.namespaces)
    unknown = _check("--subscription", "11111111-2222-3333-4444-555555555555")
    assert unknown.json["namespaces"] == []
    assert unknown.json["blind"][0]["target"] == "11111111-2222-3333-4444-555555555555"
    assert unknown.status == 3


def test_bad_settings_are_refused_before_any_request(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch):
    """A CA bundle that does not exist is named, exit 2, and nothing is sent."""
    monkeypatch.setenv("KEYHEALTH_CA_BUNDLE", "/nonexistent/ca.pem")
    run = _check()
    assert run.status == 2
    assert "KEYHEALTH_CA_BUNDLE='/nonexistent/ca.pem': no such file" in run.stderr
    assert len(sandbox.requests) == 0


def test_the_example_fleet_reads_back_as_simulate_predicts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every namespace of examples/fleet.json, a deleted vault and RBAC vault among them, reads back as simulated."""
    example, _ = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "fleet.json")
    # A live read sees the present: what the timeline plans for later is not there yet.
    present = dataclasses.replace(example, changes=tuple(c for c in example.changes if c.at <= example.now))
    # The example's observed accesses are a seed's own history, which a check without audit logs does not read.
    unobserved = tuple(dataclasses.replace(n, observed=None) for n in present.snapshot.namespaces)
    present = dataclasses.replace(present, snapshot=dataclasses.replace(present.snapshot, namespaces=unobserved))
    expected_file = tmp_path / "present.json"
    save_scenario(present, expected_file)
    simulated = run_cli("simulate", str(expected_file), "--format", "json")
    with Sandbox(example) as sandbox:
        for name, value in sandbox.environment().items():
            monkeypatch.setenv(name, value)
        checked = run_cli("check", "--format", "json", "--at", format_instant(example.now))
    live, offline = _core(checked), _core(simulated)
    # kv-telemetry's firewall keeps Service Bus out, and the monitor too (no trusted service, on no network the
    # vault allows): revoked all the same, and its key's read is a blind spot the live check says it has.
    walled, planned = live.pop("sb-telemetry"), offline.pop("sb-telemetry")
    assert live == offline
    assert walled[:5] == planned[:5] == ("revoked", 0, 1, "2026-11-22T00:00:00Z", "2026-11-22T00:05:00Z")
    findings = walled[5]
    assert isinstance(findings, list)
    assert {code for code, _, _ in findings} >= {"vault-firewall-blocks-service", "monitor-blind"}
    archive = next(n for n in checked.json["namespaces"] if n["name"] == "sb-archive")
    assert archive["status_now"] == "revoked"
    assert "vault-missing" in {f["code"] for f in archive["findings"]}


def test_what_could_not_be_read_is_saved_and_replayed_as_unknown(sandbox: Sandbox, tmp_path: Path):
    """check --save records blind spots, so simulate replays the same unknowns instead of guessing."""
    sandbox.faults.forbid(OTHER_VAULT)
    saved = tmp_path / "saved.json"
    checked = _check("--save", str(saved))
    document = json.loads(saved.read_text())
    assert document["blind"][0]["scope"] == "key"
    replayed = run_cli("simulate", str(saved), "--format", "json")
    assert _core(replayed) == _core(checked)
    assert replayed.status == 3


def test_a_vault_firewall_that_keeps_service_bus_out_is_read_from_arm_and_revokes(sandbox: Sandbox):
    """The stand-in serves the vault's networkAcls and publicNetworkAccess as ARM does; a firewall that denies by
    default without letting trusted services through makes kv-other's key unusable (sb-healthy degrades, with the
    remedy; the monitor, refused by the same firewall, says its read is a blind spot), and opening the vault to
    all networks again, seen by a later check, makes it usable."""
    from monitor.domain.model import SetNetwork

    at = datetime(2026, 11, 22, 1, tzinfo=UTC)
    sandbox.apply(SetNetwork(at=at, vault=OTHER_VAULT, default_action="Deny", bypass_azure_services=False))
    sandbox.apply(SetNetwork(at=at + timedelta(hours=1), vault=OTHER_VAULT, default_action="Allow"))
    sandbox.clock.advance(timedelta(hours=1, minutes=30))
    walled = run_cli("check", "--format", "json", "--at", "2026-11-22T01:30:00Z").namespace("sb-healthy")
    assert walled["status_now"] == "degraded" and walled["usable_keys_now"] == 1
    blocked = next(f for f in walled["findings"] if f["code"] == "vault-firewall-blocks-service")
    assert blocked["key"] == f"{OTHER_VAULT}/keys/k-other"
    assert "az keyvault update --name kv-other --bypass AzureServices" in blocked["message"]
    assert "monitor-blind" in {f["code"] for f in walled["findings"]}
    vaults = sandbox.requests.select(service="arm", path="/providers/Microsoft.KeyVault/vaults")
    assert vaults and all(r.status == 200 for r in vaults)
    sandbox.clock.advance(timedelta(hours=1))
    reopened = run_cli("check", "--format", "json", "--at", "2026-11-22T02:30:00Z").namespace("sb-healthy")
    assert reopened["status_now"] == "healthy"
    assert "vault-firewall-blocks-service" not in {f["code"] for f in reopened["findings"]}


def test_a_firewall_that_lets_trusted_services_through_but_not_the_monitor_is_unknown_not_healthy(sandbox: Sandbox):
    """Deny by default with the trusted-services bypass: Service Bus gets in, the monitor (no trusted service, on
    no allowed network) is refused 403 ForbiddenByFirewall; what it could not read is never reported healthy."""
    from monitor.domain.model import SetNetwork

    sandbox.apply(SetNetwork(at=datetime(2026, 11, 21, tzinfo=UTC), vault=OTHER_VAULT, default_action="Deny"))
    run = _check()
    both = run.namespace("sb-healthy")  # k-main, readable, and kv-other's k-other
    assert both["status_now"] == "unknown" and run.status == 3
    assert "vault-firewall-blocks-service" not in {f["code"] for f in both["findings"]}
    assert "monitor-blind" in {f["code"] for f in both["findings"]}
    refused = sandbox.requests.select(service="keyvault", vault="kv-other.vault.azure.net", status=403)
    assert refused and all(r.outcome for r in refused)


def test_a_firewall_that_lets_the_monitor_in_but_not_service_bus_is_judged_not_blind(sandbox: Sandbox):
    """The same firewall with the monitor's own network allowed (an IP rule) and no trusted-services bypass: the
    monitor reads the key, so the reference is known unusable (vault-firewall-blocks-service), not unknown."""
    from monitor.domain.model import SetNetwork

    at = datetime(2026, 11, 21, tzinfo=UTC)
    sandbox.apply(
        SetNetwork(at=at, vault=OTHER_VAULT, default_action="Deny", bypass_azure_services=False, allows_monitor=True)
    )
    both = _check().namespace("sb-healthy")
    assert both["status_now"] == "degraded" and both["usable_keys_now"] == 1
    codes = {f["code"] for f in both["findings"]}
    assert "vault-firewall-blocks-service" in codes and "monitor-blind" not in codes
    assert not sandbox.requests.select(service="keyvault", vault="kv-other.vault.azure.net", status=403)
    vault = sandbox.requests.select(service="arm", path="/providers/Microsoft.KeyVault/vaults")
    assert vault and all(r.status == 200 for r in vault)


# --- Geo-DR pairs read live: each CMK namespace's disasterRecoveryConfigs listed over ARM (the stand-in serves
# them as SBAliasList.json shapes them), the partner's identity read, and a secondary that could not use the
# primary's keys reported before any failover.

PARTNER_PRINCIPAL = "00000000-0000-0000-0000-00000000cccc"
DR_SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
PARTNER_ID = (
    f"/subscriptions/{DR_SUBSCRIPTION}/resourceGroups/rg-dr/providers/Microsoft.ServiceBus/namespaces/sb-orders-dr"
)
LOST_ID = PARTNER_ID.replace("sb-orders-dr", "sb-lost-dr")


def _paired_fleet() -> dict[str, Any]:
    return scenario(
        [
            namespace(
                "sb-orders",
                ref("k1"),
                geo_dr={
                    "alias": "orders",
                    "partner": PARTNER_ID,
                    "partner_identity": {"principal_id": PARTNER_PRINCIPAL},
                },
                require_infrastructure_encryption=True,
            ),
            namespace(
                "sb-lost",
                ref("k1"),
                geo_dr={"alias": "lost", "partner": LOST_ID, "partner_blind": "not served"},
            ),
            namespace("sb-single", ref("k1")),
        ],
        [key("k1")],
        vaults=[vault(access={SYSTEM_PRINCIPAL: ALL_NEEDED})],
    )


GEO_DR = pytest.mark.parametrize("fleet", [_paired_fleet()], indirect=True)


@GEO_DR
def test_geo_dr_a_secondary_without_access_is_reported_before_any_failover(sandbox: Sandbox):
    run = _check()
    orders = run.namespace("sb-orders")
    assert orders["status_now"] == "healthy"
    cannot = next(f for f in orders["findings"] if f["code"] == "geo-dr-partner-cannot-use-key")
    assert cannot["severity"] == "critical" and cannot["key"] == f"{VAULT}/keys/k1"
    assert cannot["message"].startswith("failover would revoke sb-orders-dr")
    assert orders["geo_dr"]["partner"] == PARTNER_ID and orders["geo_dr"]["failover"] == "would-revoke-partner"
    assert orders["require_infrastructure_encryption"] is True
    assert run.namespace("sb-single")["require_infrastructure_encryption"] is False
    assert "geo_dr" not in run.namespace("sb-single")
    # Read over ARM: the primary's configurations, then the partner in its own subscription.
    listed = sandbox.requests.select(service="arm", path="/namespaces/sb-orders/disasterRecoveryConfigs")
    assert [r.status for r in listed] == [200]
    partner = sandbox.requests.select(service="arm", path=PARTNER_ID)
    assert [r.status for r in partner] == [200]


@GEO_DR
def test_geo_dr_granting_the_secondary_access_clears_the_finding(sandbox: Sandbox):
    sandbox.apply(
        SetAccess(
            at=datetime(2026, 11, 21, tzinfo=UTC),
            vault=VAULT,
            principal=PARTNER_PRINCIPAL,
            permissions=frozenset({"get", "wrapkey", "unwrapkey"}),
        )
    )
    orders = _check().namespace("sb-orders")
    assert "geo-dr-partner-cannot-use-key" not in {f["code"] for f in orders["findings"]}
    assert orders["geo_dr"]["failover"] == "partner-can-use-keys"


@GEO_DR
def test_geo_dr_a_partner_that_cannot_be_read_is_unknown_and_the_namespace_stays_judged(sandbox: Sandbox):
    lost = _check().namespace("sb-lost")
    assert lost["status_now"] == "healthy" and lost["geo_dr"]["failover"] == "unknown"
    unknown = next(f for f in lost["findings"] if f["code"] == "geo-dr-partner-unknown")
    assert "sb-lost-dr" in unknown["message"] and "not found" in unknown["message"]


@GEO_DR
def test_geo_dr_configurations_the_monitor_cannot_list_leave_the_namespace_unpaired_not_failed(sandbox: Sandbox):
    """A refused listing is no fact about the pairing: nothing is said of it (the next poll asks again), and
    the namespace's own keys are judged as ever."""
    sandbox.faults.respond(403, code="AuthorizationFailed", service="arm", path="disasterRecoveryConfigs")
    run = _check()
    orders = run.namespace("sb-orders")
    assert orders["status_now"] == "healthy" and "geo_dr" not in orders
    assert not {"geo-dr-partner-cannot-use-key", "geo-dr-partner-unknown"} & {f["code"] for f in orders["findings"]}
    assert sandbox.requests.select(service="arm", path="disasterRecoveryConfigs", status=403)


@GEO_DR
def test_geo_dr_a_saved_check_replays_the_pairings(sandbox: Sandbox, tmp_path: Path):
    saved = tmp_path / "saved.json"
    checked = _check("--save", str(saved))
    document = json.loads(saved.read_text())
    orders = next(n for n in document["namespaces"] if n["name"] == "sb-orders")
    assert orders["geo_dr"]["partner_identity"]["principal_id"] == PARTNER_PRINCIPAL
    replayed = run_cli("simulate", str(saved), "--format", "json")

    def pairs(run: Run) -> dict[str, object]:
        return {n["name"]: (n.get("geo_dr"), sorted(f["code"] for f in n["findings"])) for n in run.json["namespaces"]}

    assert pairs(replayed) == pairs(checked)


def _hostile_partner_fleet() -> dict[str, Any]:
    hostile = PARTNER_ID + "/../../../../providers/Microsoft.Authorization/roleAssignments"
    return scenario(
        [namespace("sb-orders", ref("k1"), geo_dr={"alias": "orders", "partner": hostile})],
        [key("k1")],
        vaults=[vault(access={SYSTEM_PRINCIPAL: ALL_NEEDED})],
    )


@pytest.mark.parametrize("fleet", [_hostile_partner_fleet()], indirect=True)
def test_geo_dr_a_partner_id_outside_arms_grammar_is_never_requested(sandbox: Sandbox):
    """ARM's answer is input too: a partnerNamespace that is no Service Bus namespace id is not sent on as a
    path; the failover is unknown, with the reason."""
    orders = _check().namespace("sb-orders")
    unknown = next(f for f in orders["findings"] if f["code"] == "geo-dr-partner-unknown")
    assert "is not a Service Bus namespace id" in unknown["message"]
    assert not sandbox.requests.select(service="arm", path="roleAssignments")
    assert orders["status_now"] == "healthy"
