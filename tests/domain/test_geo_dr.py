"""Geo-DR pairs (namespaces[].geo_dr): at failover the secondary polls the primary's keys through its own
identity, so rule 2 is judged again for the partner's identity, and a partner that could use none of them is
reported before any failover, critical. And `require_infrastructure_encryption` read and reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from tests.builders import (
    ALL_NEEDED,
    SYSTEM_PRINCIPAL,
    USER_IDENTITY,
    USER_PRINCIPAL,
    VAULT,
    codes,
    finding,
    key,
    namespace,
    ref,
    scenario,
    simulate,
    vault,
)

PARTNER_PRINCIPAL = "00000000-0000-0000-0000-00000000cccc"
PARTNER_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-dr/providers/"
    "Microsoft.ServiceBus/namespaces/sb-orders-dr"
)
OTHER = "https://kv-other.vault.azure.net"


def _pair(partner_identity: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    pairing: dict[str, Any] = {"alias": "orders", "partner": PARTNER_ID, **fields}
    if partner_identity is not None:
        pairing["partner_identity"] = partner_identity
    return pairing


def _fleet(
    pairing: dict[str, Any],
    *refs: dict[str, Any],
    access: dict[str, list[str]] | None = None,
    changes: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    refs = refs or (ref("k1"),)
    vault_access = access if access is not None else {SYSTEM_PRINCIPAL: ALL_NEEDED, USER_PRINCIPAL: ALL_NEEDED}
    return scenario(
        [namespace("sb-orders", *refs, user_assigned={USER_IDENTITY: USER_PRINCIPAL}, geo_dr=pairing, **fields)],
        [key("k1"), key("k2", vault_uri=OTHER)],
        vaults=[vault(access=vault_access), vault(OTHER, access=dict(vault_access))],
        changes=changes,
    )


def test_a_secondary_without_access_is_reported_before_any_failover_with_the_grant(tmp_path: Path):
    orders = simulate(tmp_path, _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}))).namespace("sb-orders")
    assert orders["status_now"] == "healthy"  # the primary itself is fine: only a failover would revoke
    cannot = finding(orders, "geo-dr-partner-cannot-use-key")
    assert cannot["severity"] == "critical" and cannot["key"] == f"{VAULT}/keys/k1"
    assert cannot["message"].startswith("failover would revoke sb-orders-dr")
    assert f"az keyvault set-policy --name kv-test --object-id {PARTNER_PRINCIPAL}" in cannot["message"]
    assert orders["geo_dr"] == {
        "alias": "orders",
        "role": "primary",
        "partner": PARTNER_ID,
        "partner_name": "sb-orders-dr",
        "failover": "would-revoke-partner",
    }


def test_a_secondary_granted_access_draws_no_finding(tmp_path: Path):
    access = {SYSTEM_PRINCIPAL: ALL_NEEDED, PARTNER_PRINCIPAL: ["Get", "WrapKey", "UnwrapKey"]}
    run = simulate(tmp_path, _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}), access=access))
    orders = run.namespace("sb-orders")
    assert not {"geo-dr-partner-cannot-use-key", "geo-dr-partner-unknown"} & codes(orders)
    assert orders["geo_dr"]["failover"] == "partner-can-use-keys"


def test_a_partner_that_can_use_one_of_two_keys_loses_redundancy_only(tmp_path: Path):
    access = {SYSTEM_PRINCIPAL: ALL_NEEDED}
    document = _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}), ref("k1"), ref("k2", vault_uri=OTHER), access=access)
    document["vaults"][1]["access"][PARTNER_PRINCIPAL] = ALL_NEEDED
    orders = simulate(tmp_path, document).namespace("sb-orders")
    cannot = [f for f in orders["findings"] if f["code"] == "geo-dr-partner-cannot-use-key"]
    assert [(f["key"], f["severity"]) for f in cannot] == [(f"{VAULT}/keys/k1", "warning")]
    assert cannot[0]["message"].startswith("at failover sb-orders-dr could not use this key")
    assert orders["geo_dr"]["failover"] == "partner-loses-redundancy"


def test_a_user_assigned_reference_needs_the_same_identity_on_the_partner(tmp_path: Path):
    user_ref = ref("k1", identity=USER_IDENTITY)
    lacking = simulate(tmp_path, _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}), user_ref)).namespace("sb-orders")
    cannot = finding(lacking, "geo-dr-partner-cannot-use-key")
    assert cannot["severity"] == "critical"
    assert f"--user-assigned {USER_IDENTITY}" in cannot["message"] and "-g rg-dr" in cannot["message"]
    # The same identity on the partner acts as the same principal, which the vault already lets in.
    spelled = USER_IDENTITY.upper()  # identity ids compare case-insensitively
    shared = _pair({"principal_id": None, "user_assigned": {spelled: USER_PRINCIPAL}})
    having = simulate(tmp_path, _fleet(shared, user_ref)).namespace("sb-orders")
    assert "geo-dr-partner-cannot-use-key" not in codes(having)


def test_a_partner_without_a_system_assigned_identity_is_told_to_assign_one(tmp_path: Path):
    orders = simulate(tmp_path, _fleet(_pair({"principal_id": None}))).namespace("sb-orders")
    cannot = finding(orders, "geo-dr-partner-cannot-use-key")
    assert cannot["severity"] == "critical"
    assert (
        "az servicebus namespace identity assign --namespace-name sb-orders-dr -g rg-dr --system-assigned"
        in (cannot["message"])
    )


def test_what_the_primary_cannot_use_either_is_not_blamed_on_the_partner(tmp_path: Path):
    """A key the primary's own identity may not use fails the primary too: its access-denied finding tells it,
    and the partner, denied as well, adds no finding of its own for that key."""
    access = {USER_PRINCIPAL: ALL_NEEDED, PARTNER_PRINCIPAL: ALL_NEEDED}  # not the primary's system identity
    document = _fleet(
        _pair({"principal_id": PARTNER_PRINCIPAL}), ref("k1", identity=USER_IDENTITY), ref("k2", vault_uri=OTHER)
    )
    document["vaults"][0]["access"] = access
    document["vaults"][1]["access"] = {USER_PRINCIPAL: ALL_NEEDED}
    orders = simulate(tmp_path, document).namespace("sb-orders")
    assert orders["status_now"] == "degraded"
    assert finding(orders, "access-denied")["key"] == f"{OTHER}/keys/k2"
    cannot = [f for f in orders["findings"] if f["code"] == "geo-dr-partner-cannot-use-key"]
    # k1 through the user-assigned identity, which the partner does not have; k2 is the primary's own finding.
    assert [f["key"] for f in cannot] == [f"{VAULT}/keys/k1"]
    assert "does not have it" in cannot[0]["message"]


def test_a_revoked_primary_reports_its_partner_as_a_warning_not_a_second_outage(tmp_path: Path):
    expired = _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}))
    expired["keys"][0]["versions"][0]["exp"] = "2026-11-01T00:00:00Z"
    orders = simulate(tmp_path, expired).namespace("sb-orders")
    assert orders["status_now"] == "revoked"
    assert finding(orders, "geo-dr-partner-cannot-use-key")["severity"] == "warning"


def test_a_secondary_is_judged_on_its_primary(tmp_path: Path):
    orders = simulate(tmp_path, _fleet(_pair({"principal_id": None}, role="Secondary"))).namespace("sb-orders")
    assert "geo-dr-partner-cannot-use-key" not in codes(orders)
    assert orders["geo_dr"]["role"] == "secondary" and orders["geo_dr"]["failover"] == "judged-on-primary"


def test_a_partner_the_monitor_could_not_read_is_unknown_not_fine(tmp_path: Path):
    pairing = _pair(partner_blind="namespace sb-orders-dr: 403 AuthorizationFailed")
    orders = simulate(tmp_path, _fleet(pairing)).namespace("sb-orders")
    unknown = finding(orders, "geo-dr-partner-unknown")
    assert unknown["severity"] == "warning" and "403 AuthorizationFailed" in unknown["message"]
    assert orders["geo_dr"]["failover"] == "unknown"
    assert orders["status_now"] == "healthy"  # the primary's own keys were all read


def test_the_table_names_the_pair_and_what_a_failover_would_do(tmp_path: Path):
    run = simulate(tmp_path, _fleet(_pair({"principal_id": PARTNER_PRINCIPAL})), "--format", "table")
    assert "Geo-DR pairs:" in run.stdout
    assert "- sb-orders (primary) paired with sb-orders-dr, alias orders: failover would revoke sb-orders-dr" in (
        run.stdout
    )


@pytest.mark.parametrize(
    ("pairing", "path", "message"),
    [
        ({"partner": PARTNER_ID}, "namespaces[0].geo_dr.alias", "required"),
        ({"alias": "orders"}, "namespaces[0].geo_dr.partner", "required"),
        ({"alias": "orders", "partner": PARTNER_ID, "role": "tertiary"}, "namespaces[0].geo_dr.role", "one of"),
        (
            {"alias": "orders", "partner": PARTNER_ID, "partner_identity": {"principal_id": 7}},
            "namespaces[0].geo_dr.partner_identity.principal_id",
            "",
        ),
        ("orders", "namespaces[0].geo_dr", "object"),
    ],
)
def test_bad_pairings_are_named_by_path(tmp_path: Path, pairing: Any, path: str, message: str):
    run = simulate(tmp_path, _fleet(pairing))
    assert run.status == 2 and "Traceback" not in run.stderr
    assert path in run.stderr and message in run.stderr


def test_pairing_and_infrastructure_encryption_round_trip_and_are_reported(tmp_path: Path):
    document = _fleet(
        _pair({"principal_id": PARTNER_PRINCIPAL, "user_assigned": {USER_IDENTITY: USER_PRINCIPAL}}, role="primary"),
        require_infrastructure_encryption=True,
    )
    parsed, warnings = parse_scenario(document)
    assert warnings == []
    again, _ = parse_scenario(scenario_document(parsed))
    assert again == parsed
    namespace_read = parsed.snapshot.namespaces[0]
    assert namespace_read.infrastructure_encryption is True
    assert namespace_read.geo_dr is not None and namespace_read.geo_dr.partner_name == "sb-orders-dr"
    orders = simulate(tmp_path, document).namespace("sb-orders")
    assert orders["require_infrastructure_encryption"] is True
    plain = simulate(tmp_path, _fleet(_pair({"principal_id": PARTNER_PRINCIPAL}))).namespace("sb-orders")
    assert plain["require_infrastructure_encryption"] is False
