"""Rule 1's network half (scenario format: vaults[].network, op set_network): a vault neither open to all
networks nor letting trusted Microsoft services bypass its firewall is unreachable for Service Bus, so none of
its keys is usable; `simulate` says when, to the instant, and names the remedy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from tests.builders import NOW, VAULT, codes, finding, key, namespace, ref, scenario, simulate, vault

OTHER = "https://kv-other.vault.azure.net"


def _fleet(network: dict[str, Any] | None = None, changes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    walled = vault(network=network) if network is not None else vault()
    return scenario(
        [namespace("sb-walled", ref("k1")), namespace("sb-both", ref("k1"), ref("k2", vault_uri=OTHER))],
        [key("k1"), key("k2", vault_uri=OTHER)],
        vaults=[walled, vault(OTHER)],
        changes=changes,
    )


@pytest.mark.parametrize(
    ("network", "reachable"),
    [
        ({}, True),  # every field defaults to a vault without a firewall
        ({"public_network_access": False}, True),  # trusted services still bypass (the default)
        ({"default_action": "Deny"}, True),
        ({"public_network_access": False, "bypass_azure_services": False}, False),
        ({"default_action": "Deny", "bypass_azure_services": False}, False),
        ({"default_action": "deny", "bypass_azure_services": False}, False),  # Azure's values, any case
        ({"default_action": "allow", "bypass_azure_services": False}, True),  # open to all networks
        ({"public_network_access": False, "default_action": "Allow", "bypass_azure_services": False}, False),
    ],
)
def test_a_vault_is_reachable_when_open_to_all_networks_or_trusted_services_bypass(
    tmp_path: Path, network: dict[str, Any], reachable: bool
):
    run = simulate(tmp_path, _fleet(network))
    assert run.status in (0, 1, 2, 3) and "Traceback" not in run.stderr
    walled, both = run.namespace("sb-walled"), run.namespace("sb-both")
    if reachable:
        assert walled["status_now"] == "healthy" and "vault-firewall-blocks-service" not in codes(walled)
        assert both["status_now"] == "healthy"
        return
    assert walled["status_now"] == "revoked" and walled["usable_keys_now"] == 0
    assert walled["revoked_at_earliest"] == NOW and walled["revoked_by"] == "2026-11-22T00:05:00Z"
    blocked = finding(walled, "vault-firewall-blocks-service")
    assert blocked["severity"] == "critical" and blocked["key"] == f"{VAULT}/keys/k1"
    assert "az keyvault update --name kv-test --bypass AzureServices" in blocked["message"]
    # The other vault's key still serves: degraded, and the firewall is a warning there.
    assert both["status_now"] == "degraded" and both["usable_keys_now"] == 1
    assert finding(both, "vault-firewall-blocks-service")["severity"] == "warning"


def _closed(at: str) -> dict[str, Any]:
    return {"at": at, "op": "set_network", "vault": VAULT, "default_action": "Deny", "bypass_azure_services": False}


def test_set_network_revokes_from_its_instant_and_a_short_closure_is_possible_not_certain(tmp_path: Path):
    """Closed for 200 s on 1 December (shorter than a poll period: a poll may land in it), then for good on 2
    December; reopened by bypass, then closed again by turning bypass off alone."""
    changes = [
        _closed("2026-12-01T00:00:00Z"),
        {"at": "2026-12-01T00:03:20Z", "op": "set_network", "vault": VAULT, "bypass_azure_services": True},
        {"at": "2026-12-02T00:00:00Z", "op": "set_network", "vault": VAULT, "bypass_azure_services": False},
    ]
    walled = simulate(tmp_path, _fleet(changes=changes)).namespace("sb-walled")
    assert walled["status_now"] == "healthy"
    assert walled["revoked_at_earliest"] == "2026-12-01T00:00:00Z"
    assert walled["revoked_by"] == "2026-12-02T00:05:00Z"
    assert "revocation-predicted" in codes(walled)


def test_a_change_at_the_horizon_instant_is_outside_the_window(tmp_path: Path):
    document = _fleet(changes=[_closed("2026-12-22T00:00:00Z")])
    document["horizon"] = "2026-12-22T00:00:00Z"
    walled = simulate(tmp_path, document).namespace("sb-walled")
    assert walled["revoked_at_earliest"] is None and walled["revoked_by"] is None


def test_opening_the_network_recovers_a_walled_vault(tmp_path: Path):
    changes = [{"at": "2026-11-22T00:10:00Z", "op": "set_network", "vault": VAULT, "public_network_access": True}]
    network = {"public_network_access": False, "default_action": "Allow", "bypass_azure_services": False}
    walled = simulate(tmp_path, _fleet(network, changes)).namespace("sb-walled")
    assert walled["status_now"] == "revoked"
    assert walled["revoked_at_earliest"] == NOW and walled["revoked_by"] == "2026-11-22T00:05:00Z"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["vaults"][0].update(network={"default_action": "Block"}), "$.vaults[0].network.default_action"),
        (lambda d: d["vaults"][0].update(network={"bypass_azure_services": "yes"}), "$.vaults[0].network"),
        (lambda d: d["vaults"][0].update(network=[]), "$.vaults[0].network"),
        (lambda d: d["changes"].append({"at": NOW, "op": "set_network", "vault": VAULT}), "$.changes[0]"),
        (
            lambda d: d["changes"].append(
                {"at": NOW, "op": "set_network", "vault": OTHER + "x", "default_action": "Deny"}
            ),
            "$.changes[0].vault",
        ),
    ],
)
def test_bad_network_input_is_refused_naming_where(tmp_path: Path, mutate: Any, path: str):
    document = _fleet()
    mutate(document)
    run = simulate(tmp_path, document)
    assert run.status == 2 and "Traceback" not in run.stderr
    assert path in run.stderr


def test_an_unknown_network_field_is_named_and_ignored(tmp_path: Path):
    document = _fleet({"firewall": True, "bypass_azure_services": False, "default_action": "Deny"})
    run = simulate(tmp_path, document)
    assert "$.vaults[0].network.firewall: unknown field, ignored" in run.stderr
    assert run.namespace("sb-walled")["status_now"] == "revoked"


def test_network_and_set_network_are_written_back_as_read():
    document = _fleet(
        {"public_network_access": False, "default_action": "Deny", "bypass_azure_services": False},
        [_closed("2026-12-01T00:00:00Z")],
    )
    parsed, warnings = parse_scenario(document)
    assert warnings == []
    again, _ = parse_scenario(scenario_document(parsed))
    assert again == parsed
    written = scenario_document(parsed)
    assert written["vaults"][0]["network"] == document["vaults"][0]["network"]  # type: ignore[index]
    assert "network" not in written["vaults"][1]  # type: ignore[index]


def test_the_monitors_own_network_is_an_extension_that_changes_no_prediction_and_round_trips(tmp_path: Path):
    """`allows_monitor` says the firewall lets the monitor read (an IP or network rule): Service Bus is still kept
    out without the bypass, and the field is written back, in vaults[].network and in set_network."""
    closed = {"default_action": "Deny", "bypass_azure_services": False}
    plain = simulate(tmp_path, _fleet(closed)).namespace("sb-walled")
    allowed = simulate(tmp_path, _fleet({**closed, "allows_monitor": True})).namespace("sb-walled")
    assert allowed == plain and allowed["status_now"] == "revoked"
    change = {"at": "2026-12-01T00:00:00Z", "op": "set_network", "vault": VAULT, "allows_monitor": True}
    document = _fleet({**closed, "allows_monitor": True}, changes=[change])
    parsed, warnings = parse_scenario(document)
    assert warnings == []
    assert parsed.snapshot.vaults[0].network.allows_monitor is True
    again, _ = parse_scenario(scenario_document(parsed))
    assert again == parsed
    assert scenario_document(parsed)["changes"][0]["allows_monitor"] is True  # type: ignore[index]
