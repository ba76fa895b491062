"""Findings: which conditions are reported, at what severity, with what remedy."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from monitor.domain.findings import Code, Finding, Severity, Thresholds, humanize
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.scenario import parse_scenario
from tests.builders import USER_IDENTITY, USER_PRINCIPAL, VAULT, key, namespace, ref, scenario, vault, version


def _evaluate(document: dict[str, object], thresholds: Thresholds | None = None) -> FleetReport:
    parsed, warnings = parse_scenario(document)
    assert warnings == []
    return evaluate(parsed, thresholds or Thresholds())


def _findings(document: dict[str, object], name: str = "sb") -> dict[Code, Finding]:
    report = _evaluate(document)
    target = next(n for n in report.namespaces if n.prediction.namespace.name == name)
    return {f.code: f for f in target.findings}


@pytest.mark.parametrize(
    ("days_ahead", "severity"),
    [
        (3, Severity.CRITICAL),
        (7, Severity.CRITICAL),
        (8, Severity.WARNING),
        (30, Severity.WARNING),
        (31, Severity.INFO),
    ],
)
def test_revocation_severity_follows_the_thresholds(days_ahead, severity):
    """A revocation within 7 days is critical, within 30 a warning, later info (thresholds inclusive)."""
    exp_time = (datetime(2026, 11, 22) + timedelta(days=days_ahead)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp=exp_time))])
    assert _findings(document)[Code.REVOCATION_PREDICTED].severity is severity


def test_an_expiring_key_without_cover_is_as_severe_as_the_revocation():
    """The only key expiring in 5 days is critical, and the message gives the rotate command."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-11-27T00:00:00Z"))])
    expiring = _findings(document)[Code.KEY_EXPIRING]
    assert expiring.severity is Severity.CRITICAL
    assert "az keyvault key rotate --vault-name kv-test --name k" in expiring.message
    assert "no other listed key is usable then" in expiring.message


def test_an_expiring_key_with_cover_is_one_step_less_severe():
    """With another usable key the expiry costs redundancy, not the namespace: warning instead of critical."""
    document = scenario(
        [namespace("sb", ref("k"), ref("k2"))], [key("k", version("v1", exp="2026-11-27T00:00:00Z")), key("k2")]
    )
    findings = _findings(document)
    assert findings[Code.KEY_EXPIRING].severity is Severity.WARNING
    assert Code.REVOCATION_PREDICTED not in findings


def test_an_expiry_beyond_the_warning_threshold_is_not_reported_as_expiring():
    """key-expiring speaks of expiries within the warning threshold only."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2027-06-01T00:00:00Z"))])
    findings = _findings(document)
    assert Code.KEY_EXPIRING not in findings
    assert findings[Code.REVOCATION_PREDICTED].severity is Severity.INFO


def test_an_expiry_covered_by_a_planned_rotation_is_not_expiring():
    """A versionless reference rotated before its version expires never expires."""
    changes = [
        {"at": "2026-11-25T00:00:00Z", "op": "new_version", "vault": VAULT, "key": "k", "version": {"version": "v2"}}
    ]
    document = scenario(
        [namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-11-27T00:00:00Z"))], changes=changes
    )
    assert Code.KEY_EXPIRING not in _findings(document)


def test_one_listed_key_is_info_but_one_usable_of_several_is_a_warning():
    """no-redundancy is info for a single-key namespace, a warning when the others are broken."""
    single = scenario([namespace("sb", ref("k"))], [key("k")])
    assert _findings(single)[Code.NO_REDUNDANCY].severity is Severity.INFO
    broken = scenario([namespace("sb", ref("k"), ref("gone"))], [key("k")])
    findings = _findings(broken)
    assert findings[Code.NO_REDUNDANCY].severity is Severity.WARNING
    assert findings[Code.KEY_MISSING].severity is Severity.WARNING


def test_a_broken_reference_is_critical_only_when_nothing_else_works():
    """A deleted key is a warning beside a usable key, critical when it was the last one."""
    keys = [key("k", deleted=True), key("k2")]
    degraded = _findings(scenario([namespace("sb", ref("k"), ref("k2"))], keys))
    assert degraded[Code.KEY_DELETED].severity is Severity.WARNING
    assert "az keyvault key recover --vault-name kv-test --name k" in degraded[Code.KEY_DELETED].message
    revoked = _findings(scenario([namespace("sb", ref("k"))], keys))
    assert revoked[Code.KEY_DELETED].severity is Severity.CRITICAL


def test_vault_protection_off_is_reported_with_the_fix():
    """Soft delete and purge protection off each give a warning naming the az command."""
    document = scenario(
        [namespace("sb", ref("k"))], [key("k")], vaults=[vault(soft_delete=False, purge_protection=False)]
    )
    findings = _findings(document)
    assert findings[Code.VAULT_SOFT_DELETE_OFF].severity is Severity.WARNING
    assert "--enable-soft-delete true" in findings[Code.VAULT_SOFT_DELETE_OFF].message
    assert "--enable-purge-protection true" in findings[Code.VAULT_PURGE_PROTECTION_OFF].message


def test_rbac_vaults_get_a_role_assignment_remedy():
    """On an RBAC vault, access-denied suggests the Crypto Service Encryption User role for the principal."""
    document = scenario(
        [namespace("sb", ref("k", identity=USER_IDENTITY), user_assigned={USER_IDENTITY: USER_PRINCIPAL})],
        [key("k")],
        vaults=[vault(rbac=True, access={USER_PRINCIPAL: ["get"]})],
    )
    denied = _findings(document)[Code.ACCESS_DENIED]
    assert "lacks unwrapKey, wrapKey" in denied.message
    assert 'az role assignment create --role "Key Vault Crypto Service Encryption User"' in denied.message
    assert f"--assignee-object-id {USER_PRINCIPAL}" in denied.message


def test_managed_hsm_keys_get_hsm_commands():
    """A Managed HSM reference is fixed with --hsm-name, not --vault-name."""
    hsm = "https://hsm-prod.managedhsm.azure.net"
    document = scenario(
        [namespace("sb", ref("k", vault_uri=hsm))], [key("k", deleted=True, vault_uri=hsm)], vaults=[vault(hsm)]
    )
    assert "az keyvault key recover --hsm-name hsm-prod --name k" in _findings(document)[Code.KEY_DELETED].message


def test_a_pinned_version_that_is_current_and_never_expires_is_info():
    """Pinning alone is a note until the key rotates past it or the version can expire."""
    document = scenario([namespace("sb", ref("k", version_id="v1"))], [key("k")])
    assert _findings(document)[Code.VERSION_PINNED].severity is Severity.INFO


def test_the_revocation_message_says_why():
    """revocation-predicted names each listed key and why it is unusable at that moment."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-11-27T00:00:00Z"))])
    message = _findings(document)[Code.REVOCATION_PREDICTED].message
    assert "between 2026-11-27T00:00:00Z and 2026-11-27T00:05:00Z (in 5 days)" in message
    assert f"{VAULT}/keys/k key-expired" in message


def test_findings_are_sorted_worst_first_with_causes_before_the_consequence():
    """Within a severity the concrete cause precedes revocation-predicted."""
    report = _evaluate(scenario([namespace("sb", ref("k"))], [key("k", deleted=True)]))
    codes = [f.code for f in report.namespaces[0].findings]
    assert codes[:2] == [Code.KEY_DELETED, Code.REVOCATION_PREDICTED]


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(days=6, hours=4, minutes=3), "in 6 days 4 hours"),
        (timedelta(minutes=3), "in 3 minutes"),
        (timedelta(seconds=-3601), "1 hour 1 second ago"),
        (timedelta(days=1), "in 1 day"),
    ],
)
def test_humanize_gives_the_two_largest_units(delta, text):
    """Durations read as people say them."""
    assert humanize(delta) == text
