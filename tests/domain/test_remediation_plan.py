"""The pure parts of remediation: allow-lists, Key Vault durations and policies, what a new version must be."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.domain.model import KeyVersion
from monitor.domain.remediation import (
    RemediationPolicy,
    parse_duration,
    parse_key_pattern,
    policy_expiry,
    policy_rotates_at,
    version_fit,
)

NOW = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P90D", timedelta(days=90)),
        ("P1Y", timedelta(days=365)),
        ("P2M", timedelta(days=60)),
        ("P1W", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT30M", timedelta(days=1, minutes=30)),
        ("p30d", timedelta(days=30)),
        ("P", None),
        ("90 days", None),
        (None, None),
    ],
)
def test_key_vault_durations(text: object, expected: timedelta | None):
    assert parse_duration(text) == expected


def test_the_earliest_rotate_trigger_counts_and_notify_does_not():
    version = KeyVersion("v1", created=NOW - timedelta(days=80), exp=NOW + timedelta(days=10))
    policy = {
        "lifetimeActions": [
            {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}},
            {"trigger": {"timeAfterCreate": "P85D"}, "action": {"type": "Rotate"}},
            {"trigger": {"timeBeforeExpiry": "P2D"}, "action": {"type": "rotate"}},
        ],
        "attributes": {"expiryTime": "P1Y"},
    }
    assert policy_rotates_at(policy, version) == NOW + timedelta(days=5)
    assert policy_expiry(policy) == timedelta(days=365)
    assert policy_rotates_at(None, version) is None and policy_expiry({"lifetimeActions": []}) is None


def test_a_new_version_must_be_enabled_wrap_capable_and_last():
    lasts = NOW + timedelta(days=7)
    good = KeyVersion("v2", created=NOW, exp=NOW + timedelta(days=90), key_ops=("wrapKey", "unwrapKey"))
    assert version_fit(good, now=NOW, lasts_until=lasts) is None
    assert version_fit(KeyVersion("v", created=NOW, enabled=False), now=NOW, lasts_until=lasts) == "it is disabled"
    short = KeyVersion("v", created=NOW, exp=NOW + timedelta(days=3))
    assert "within the rotation threshold" in (version_fit(short, now=NOW, lasts_until=lasts) or "")
    no_wrap = KeyVersion("v", created=NOW, key_ops=("encrypt",))
    assert "lack wrapKey or unwrapKey" in (version_fit(no_wrap, now=NOW, lasts_until=lasts) or "")


def test_allow_lists_match_the_full_vault_host_and_the_key_name_case_insensitively():
    """A key pattern pins one vault host of one cloud; its wildcard matches key names only."""
    policy = RemediationPolicy(
        keys=(
            parse_key_pattern("https://kv-prod.vault.azure.net/keys/sb-*"),
            parse_key_pattern("https://kv-dr.vault.azure.net/keys/*"),
        ),
        namespaces=("sb-pay*",),
    )
    assert policy.key_allowed("https://KV-PROD.vault.azure.net/", "SB-Orders")
    assert policy.key_allowed("https://kv-prod.vault.azure.net:443", "sb-orders")
    assert policy.key_allowed("https://kv-dr.vault.azure.net", "anything")
    assert not policy.key_allowed("https://kv-prod.vault.azure.net", "other")
    # The same vault name elsewhere: a Managed HSM, another cloud, a look-alike host.
    assert not policy.key_allowed("https://kv-prod.managedhsm.azure.net", "sb-orders")
    assert not policy.key_allowed("https://kv-prod.vault.azure.cn", "sb-orders")
    assert not policy.key_allowed("https://kv-prod.vault.azure.net.evil.example", "sb-orders")
    assert not policy.key_allowed("http://kv-prod.vault.azure.net", "sb-orders")
    assert not policy.key_allowed("https://kv-prod.vault.azure.net:8443", "sb-orders")
    assert not policy.key_allowed("https://kv-dr.vault.azure.net/keys/x", "anything")
    assert policy.namespace_allowed("SB-Payments") and not policy.namespace_allowed("sb-orders")
    assert not RemediationPolicy().key_allowed("https://kv-prod.vault.azure.net", "sb-orders")  # empty: none
