"""Settings: every one documented, parsed, validated, and secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.domain.errors import SettingError
from monitor.entry.config import SETTINGS, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", SETTINGS.values(), ids=lambda s: s.name)
def test_every_setting_is_in_the_readme_with_its_default(spec):
    """The README's settings table names each setting and its default."""
    row = next((line for line in README.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
    assert row is not None, spec.name
    assert (f"`{spec.default}`" if spec.default else "(empty)") in row


def test_defaults_apply_when_nothing_is_set():
    """An empty environment gives the documented defaults."""
    settings = Settings.from_environment({})
    assert settings == Settings()
    assert settings.thresholds.warning.days == 30 and settings.thresholds.critical.days == 7


def test_values_are_parsed():
    """Numbers, lists and URLs come out typed."""
    settings = Settings.from_environment(
        {
            "KEYHEALTH_SUBSCRIPTIONS": " sub-a, sub-b ;sub-c",
            "KEYHEALTH_ARM_ENDPOINT": "https://127.0.0.1:8443/",
            "KEYHEALTH_HTTP_RETRIES": "0",
            "KEYHEALTH_WARNING_DAYS": "0.5",
            "KEYHEALTH_CRITICAL_DAYS": "0.25",
        }
    )
    assert settings.subscriptions == ("sub-a", "sub-b", "sub-c")
    assert settings.arm_endpoint == "https://127.0.0.1:8443"
    assert settings.http_retries == 0
    assert settings.thresholds.critical.total_seconds() == 6 * 3600


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KEYHEALTH_ARM_ENDPOINT", "http://management.azure.com", "expected an https:// URL"),
        ("KEYHEALTH_HTTP_RETRIES", "three", "a whole number"),
        ("KEYHEALTH_HTTP_RETRIES", "99", "from 0 to 10"),
        ("KEYHEALTH_HTTP_TIMEOUT_SECONDS", "nan", "from 1 to 600"),
        ("KEYHEALTH_CONCURRENCY", "0", "from 1 to 1024"),
        ("KEYHEALTH_SUBSCRIPTIONS", "/subscriptions/abc", "is not a subscription id"),
        ("KEYHEALTH_CA_BUNDLE", "/nonexistent.pem", "no such file"),
    ],
)
def test_a_bad_value_names_the_setting(name, value, problem):
    """Each unusable value raises SettingError with the setting's name, its value and the problem."""
    with pytest.raises(SettingError) as raised:
        Settings.from_environment({name: value})
    assert raised.value.setting == name
    assert problem in str(raised.value)


def test_the_static_token_never_shows():
    """repr(Settings) hides secrets."""
    settings = Settings.from_environment({"KEYHEALTH_STATIC_TOKEN": "s3cr3t-token"})
    assert settings.static_token == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(settings)
    assert "static_token='***'" in repr(settings) or "static_token=***" in repr(settings)


def test_the_local_settings_example_lists_every_setting_with_a_valid_value():
    """local.settings.json.example names every setting, and its values pass validation."""
    import json

    example = json.loads((Path(__file__).resolve().parents[2] / "local.settings.json.example").read_text())
    values = example["Values"]
    assert {spec.name for spec in SETTINGS.values()} <= set(values)
    Settings.from_environment({k: v for k, v in values.items() if k.startswith("KEYHEALTH_")})
    assert values["KEYHEALTH_POLL_SCHEDULE"] == "0 */5 * * * *"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("kv-prod/sb-*", "expected https://<vault-name>.<suffix>/keys/<key-name>"),  # the first label alone
        ("https://kv-prod*/keys/sb-cmk", "a wildcard in the vault host"),  # could reach any suffix
        ("https://kv-prod.*/keys/sb-cmk", "a wildcard in the vault host"),
        ("https://kv-*.vault.azure.net/keys/sb-cmk", "a wildcard in the vault host"),
        ("https://kv-prod.vault.azure.net.evil.example/keys/x", "is not a Key Vault or Managed HSM host"),
        ("https://kv-prod.example.com/keys/x", "is not a Key Vault or Managed HSM host"),
        ("https://kv-prod/keys/x", "is not a Key Vault or Managed HSM host"),
        ("http://kv-prod.vault.azure.net/keys/x", "expected https://"),
        ("https://kv-prod.vault.azure.net/secrets/x", "expected https://"),
        ("https://kv-prod.vault.azure.net/keys/sb-cmk/0123abcd", "not versions"),
        ("https://kv-prod.vault.azure.net/keys/sb_cmk", "is not a key name pattern"),
        ("https://kv-prod.vault.azure.net/keys/[a-z]*", "is not a key name pattern"),
        ("https://k.vault.azure.net/keys/x", "is not a vault name"),
        ("https://kv--prod.vault.azure.net/keys/x", "is not a vault name"),
    ],
)
def test_a_remediation_key_pattern_that_does_not_pin_one_vault_host_is_refused(pattern, problem):
    """KEYHEALTH_REMEDIATION_KEYS refuses at start-up any pattern whose vault host is not written out in full with a
    known Key Vault suffix, naming the pattern and the accepted form."""
    with pytest.raises(SettingError) as raised:
        Settings.from_environment({"KEYHEALTH_REMEDIATION_KEYS": f"https://kv-ok.vault.azure.net/keys/k, {pattern}"})
    assert raised.value.setting == "KEYHEALTH_REMEDIATION_KEYS"
    message = str(raised.value)
    assert f"pattern {pattern!r}" in message and problem in message
    assert "https://<vault-name>.<suffix>/keys/<key-name>" in message


def test_remediation_key_patterns_are_read_case_folded_and_once():
    """Accepted patterns come out in one spelling, duplicates dropped, Managed HSM and other clouds included."""
    settings = Settings.from_environment(
        {
            "KEYHEALTH_REMEDIATION_KEYS": "HTTPS://KV-Prod.Vault.Azure.Net/keys/SB-*, https://kv-prod.vault.azure.net"
            "/keys/sb-*,https://hsm-a.managedhsm.azure.net/keys/k1, https://kv-cn.vault.azure.cn/keys/k?"
        }
    )
    assert settings.remediation_keys == (
        "https://kv-prod.vault.azure.net/keys/sb-*",
        "https://hsm-a.managedhsm.azure.net/keys/k1",
        "https://kv-cn.vault.azure.cn/keys/k?",
    )
    assert Settings.from_environment({}).remediation_policy.keys == ()  # empty: nothing allowed
