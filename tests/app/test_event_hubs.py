"""Event Hubs namespaces (Premium, or in a Dedicated cluster) encrypted with the same customer-managed-key model
as Service Bus: found by the same Resource Graph query (or azure-mgmt-eventhub's listing), judged by the same
core, their kind named in the JSON, the remedies (`az eventhubs …`), the alerts and the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.adapters.servicebus import namespace_from_document
from monitor.domain.model import NamespaceKind
from monitor.domain.scenario import parse_scenario
from monitor.sandbox import Sandbox
from tests.builders import NOW, SYSTEM_PRINCIPAL, key, namespace, ref, run_cli, scenario, simulate, vault

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "azure-rest-api-specs/eventhub/stable-2024-01-01"
SUB = "00000000-0000-0000-0000-000000000000"


def _event_hubs(name: str, *refs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    document = namespace(name, *refs, **fields)
    document["id"] = document["id"].replace("Microsoft.ServiceBus", "Microsoft.EventHub")
    return document


def test_the_published_dedicated_cluster_example_is_a_cmk_namespace_whatever_its_sku():
    """EHNameSpaceCreate.json (as published): sku Standard, in a Dedicated cluster (clusterArmId), one key through a
    user-assigned identity, keyVersion "" for versionless."""
    body = json.loads((FIXTURE / "EHNameSpaceCreate.json").read_text())["responses"]["200"]["body"]
    found = namespace_from_document(body)
    assert found is not None and found.kind is NamespaceKind.EVENT_HUBS
    assert [(r.name, r.version, r.identity is not None) for r in found.keys] == [("Samplekey", None, True)]
    assert found.infrastructure_encryption is False
    # Without the cluster a Standard namespace cannot take CMK: it is not one, whatever it claims.
    standalone = {**body, "properties": {k: v for k, v in body["properties"].items() if k != "clusterArmId"}}
    assert namespace_from_document(standalone) is None
    # A Service Bus namespace needs Premium: a cluster id does not make a Standard one CMK.
    service_bus = {**body, "id": body["id"].replace("Microsoft.EventHub", "Microsoft.ServiceBus")}
    assert namespace_from_document(service_bus) is None


def test_simulate_names_the_kind_and_the_event_hubs_commands(tmp_path: Path):
    walled = vault(
        "https://kv-walled.vault.azure.net", network={"default_action": "Deny", "bypass_azure_services": False}
    )
    document = scenario(
        [
            _event_hubs("eh-orders", ref("k1"), ref("k2", identity="/x/userAssignedIdentities/id-gone")),
            _event_hubs("eh-walled", ref("k3", vault_uri="https://kv-walled.vault.azure.net")),
            namespace("sb-orders", ref("k1")),
        ],
        [key("k1"), key("k2"), key("k3", vault_uri="https://kv-walled.vault.azure.net")],
        vaults=[vault(), walled],
    )
    run = simulate(tmp_path, document)
    orders, sb = run.namespace("eh-orders"), run.namespace("sb-orders")
    assert orders["kind"] == "eventhubs" and sb["kind"] == "servicebus"
    assert orders["status_now"] == "degraded"
    missing = next(f for f in orders["findings"] if f["code"] == "identity-missing")
    assert "az eventhubs namespace identity assign --namespace-name eh-orders" in missing["message"]
    redundancy = next(f for f in orders["findings"] if f["code"] == "no-redundancy")
    assert "az eventhubs namespace encryption add --namespace-name eh-orders" in redundancy["message"]
    blocked = next(f for f in run.namespace("eh-walled")["findings"] if f["code"] == "vault-firewall-blocks-service")
    assert "keeps Event Hubs out" in blocked["message"]


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _mixed_fleet() -> dict[str, Any]:
    return scenario(
        [
            namespace("sb-orders", ref("k1")),
            _event_hubs("eh-orders", ref("k1"), ref("k2")),
            _event_hubs("eh-broken", ref("k-never-created")),
        ],
        [key("k1"), key("k2")],
        vaults=[vault(access={SYSTEM_PRINCIPAL: ["get", "wrapKey", "unwrapKey"]})],
    )


@pytest.mark.parametrize("inventory", ["resource-graph", "arm"])
def test_check_reads_event_hubs_namespaces_beside_service_bus_ones_as_simulate_predicts(
    inventory: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    document = _mixed_fleet()
    parsed, _ = parse_scenario(document)
    offline = simulate(tmp_path, document).json
    with Sandbox(parsed) as sandbox:
        for name, value in sandbox.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_INVENTORY", inventory)
        live = run_cli("check", "--format", "json", "--at", NOW).json
        listed = sandbox.requests.select(service="arm", path=f"/subscriptions/{SUB}/providers/Microsoft.EventHub")
    assert bool(listed) is (inventory == "arm")  # Resource Graph finds both kinds in one query

    def core(report: dict[str, Any]) -> dict[str, Any]:
        return {
            n["name"]: (n["kind"], n["status_now"], sorted((f["code"], f["severity"]) for f in n["findings"]))
            for n in report["namespaces"]
        }

    assert core(live) == core(offline)
    assert core(live)["eh-orders"][:2] == ("eventhubs", "healthy")
    assert core(live)["eh-broken"][:2] == ("eventhubs", "revoked")


def test_an_event_hubs_namespace_pages_on_call_by_its_kind():
    from datetime import UTC, datetime

    from monitor.domain.alert import NoticeContext, alert_for
    from monitor.domain.findings import Thresholds
    from monitor.domain.fleet import evaluate
    from monitor.domain.incidents import Condition, Level, Notice

    parsed, _ = parse_scenario(_mixed_fleet())
    report = next(n for n in evaluate(parsed, Thresholds()).namespaces if n.prediction.namespace.name == "eh-broken")
    now = datetime(2026, 11, 22, tzinfo=UTC)
    context = NoticeContext("n1", Notice.OPEN, Condition.REVOCATION, Level.REVOKED, None, 1, now)
    alert = alert_for(
        report, context, findings=report.findings, key_tags={}, portal="https://portal.azure.com", now=now
    )
    assert alert.headline(now).startswith("[REVOKED] eh-broken (Event Hubs) REVOKED")
    assert alert.document()["namespace"]["kind"] == "eventhubs"


def test_remediation_never_unpins_an_event_hubs_namespace_and_says_so():
    """Unpinning writes the namespace's encryption through azure-mgmt-servicebus; an Event Hubs one is left to a
    person, even where the policy would allow its name."""
    from datetime import UTC, datetime

    from monitor.domain.findings import Thresholds
    from monitor.domain.fleet import evaluate
    from monitor.domain.remediation import Action, Mode, RemediationPolicy, plan
    from monitor.domain.world import World
    from tests.builders import version

    document = scenario(
        [_event_hubs("eh-pinned", ref("k1", version_id="v1")), namespace("sb-pinned", ref("k1", version_id="v1"))],
        [key("k1", version("v1"), version("v2", created="2026-10-01T00:00:00Z"))],
    )
    parsed, _ = parse_scenario(document)
    report = evaluate(parsed, Thresholds())
    policy = RemediationPolicy(mode=Mode.ON, actions=frozenset(Action), namespaces=("*",))
    now = datetime(2026, 11, 22, tzinfo=UTC)
    unpins = {
        p.namespaces[0]: p.blocked
        for p in plan(report.namespaces, World(parsed.snapshot), policy, now=now)
        if p.action is Action.UNPIN
    }
    assert unpins == {
        "eh-pinned": "unpinning is for Service Bus namespaces; unpin Event Hubs namespace eh-pinned by hand",
        "sb-pinned": None,
    }


def test_a_subscription_without_the_event_hubs_provider_registered_is_not_blind(
    monkeypatch: pytest.MonkeyPatch,
):
    """ARM lists no namespaces of a provider the subscription never registered: 409 MissingSubscriptionRegistration
    means none, not 'could not read'; any other refusal still leaves the subscription blind."""
    parsed, _ = parse_scenario(scenario([namespace("sb-orders", ref("k1"))], [key("k1")]))
    with Sandbox(parsed) as sandbox:
        for name, value in sandbox.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_INVENTORY", "arm")
        monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "0")
        listing = f"/subscriptions/{SUB}/providers/Microsoft.EventHub/namespaces"
        rule = sandbox.faults.respond(409, code="MissingSubscriptionRegistration", service="arm", path=listing)
        unregistered = run_cli("check", "--format", "json", "--at", NOW)
        sandbox.faults.remove(rule)
        sandbox.faults.respond(403, code="AuthorizationFailed", service="arm", path=listing)
        refused = run_cli("check", "--format", "json", "--at", NOW)
    assert "blind" not in unregistered.json and unregistered.namespace("sb-orders")["status_now"] == "healthy"
    assert refused.status == 3 and refused.json["blind"][0]["scope"] == "subscription"
    assert "Event Hubs namespaces" in refused.json["blind"][0]["reason"]
