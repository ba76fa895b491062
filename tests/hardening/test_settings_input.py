"""Settings that once raised something other than SettingError: each is now refused with the setting's name."""

from __future__ import annotations

import json

import pytest

from monitor.domain.errors import SettingError
from monitor.entry.config import Settings


def _refused(environment: dict[str, str]) -> SettingError:
    with pytest.raises(SettingError) as refused:
        Settings.from_environment(environment)
    return refused.value


@pytest.mark.parametrize("setting", ["KEYHEALTH_ARM_ENDPOINT", "KEYHEALTH_KEYVAULT_ENDPOINT", "KEYHEALTH_PORTAL_URL"])
def test_a_url_setting_with_an_unclosed_ipv6_bracket_is_refused_by_name(setting: str):
    """urlsplit raises ValueError for https://[::1; the setting is named instead."""
    refused = _refused({setting: "https://[::1"})
    assert refused.setting == setting and "expected an https:// URL" in str(refused)


def test_a_sink_url_with_an_unclosed_ipv6_bracket_is_refused_with_its_path():
    """The same in KEYHEALTH_ALERTS: the JSON path is named, the URL (it may carry a token) is not repeated."""
    config = {"sinks": {"hook": {"type": "webhook", "url": "https://[::1/hooks/t0ken"}}}
    refused = _refused({"KEYHEALTH_ALERTS": json.dumps(config)})
    assert "$.sinks.hook.url: expected an https:// URL" in str(refused) and "t0ken" not in str(refused)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"sinks": 5}, "$.sinks: expected an object, got int"),
        ({"sinks": [[1]]}, "$.sinks: expected an object, got list"),
        ({"sinks": {"a": {"type": ["webhook"]}}}, "$.sinks.a.type: expected one of"),
        ({"sinks": {"a": {"type": "webhook", "url": "https://x"}}, "routes": [{"sinks": ["a"], "tags": 7}]}, "tags"),
        (
            {"sinks": {"a": {"type": "webhook", "url": "https://x", "min_level": ["x"]}}},
            "setting KEYHEALTH_ALERTS='(not shown)': $.sinks.a.min_level: expected a non-empty string",
        ),
    ],
    ids=["sinks-a-number", "sinks-a-list-of-lists", "type-a-list", "tags-a-number", "min-level-a-list"],
)
def test_an_alert_configuration_of_the_wrong_shape_is_refused_with_its_path(config: object, problem: str):
    """Wrong JSON shapes raised TypeError (not iterable, unhashable); now each names its JSON path once."""
    refused = str(_refused({"KEYHEALTH_ALERTS": json.dumps(config)}))
    assert problem in refused
    assert refused.count("KEYHEALTH_ALERTS") == 1, refused


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[" * 100_000, "nested too deeply"),
        ("1" * 5000, "not JSON that can be read: Exceeds the limit"),
    ],
    ids=["nested-100000-deep", "integer-of-5000-digits"],
)
def test_an_alert_configuration_the_decoder_cannot_take_is_refused(raw: str, problem: str):
    """RecursionError and the integer digit limit's ValueError became SettingError naming KEYHEALTH_ALERTS."""
    refused = _refused({"KEYHEALTH_ALERTS": raw})
    assert refused.setting == "KEYHEALTH_ALERTS" and problem in str(refused) and len(str(refused)) < 300


def test_an_alert_configuration_file_that_is_not_utf8_is_refused(tmp_path):
    """@file with bytes that are not UTF-8 raised UnicodeDecodeError; now the file and the byte are named."""
    path = tmp_path / "alerts.json"
    path.write_bytes(b'{"sinks": {}}\xff')
    refused = _refused({"KEYHEALTH_ALERTS": f"@{path}"})
    assert f"cannot read {path}: not UTF-8 text" in str(refused)


def test_a_ca_bundle_path_too_long_for_the_file_system_is_refused_by_name():
    """Path.is_file raised OSError (file name too long) out of Settings; now the setting is named."""
    refused = _refused({"KEYHEALTH_CA_BUNDLE": "a" * 5000})
    assert refused.setting == "KEYHEALTH_CA_BUNDLE" and "cannot be read: File name too long" in str(refused)


@pytest.mark.parametrize(
    ("setting", "value", "shown"),
    [
        ("KEYHEALTH_WEBHOOK_SECRET", "s3cr\udcffet", "(not shown)"),
        ("KEYHEALTH_STATIC_TOKEN", "t0k\udcffen", "(not shown)"),
        ("KEYHEALTH_SQLITE_PATH", "state\udcff.sqlite", "state\udcff.sqlite"),
    ],
    ids=["webhook-secret", "static-token", "sqlite-path"],
)
def test_a_setting_that_is_not_utf8_is_refused_and_a_secret_not_shown(setting: str, value: str, shown: str):
    """Bytes that are not UTF-8 reach os.environ as lone surrogates (a webhook secret then failed every request
    with UnicodeEncodeError): refused by name at start-up, a secret's value never shown."""
    message = str(_refused({setting: value}))
    assert f"setting {setting}={shown!r}: is not valid UTF-8 text" in message
    assert message.encode("utf-8")  # the message itself can be printed and logged


def test_a_sink_secret_that_is_not_utf8_is_refused_by_its_settings_name():
    """A PagerDuty routing key with such bytes is named by its app setting, never by its value."""
    config = {"sinks": {"pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY"}}}
    refused = str(_refused({"KEYHEALTH_ALERTS": json.dumps(config), "PD_KEY": "PDk3y\udcff"}))
    assert "the app setting PD_KEY is not valid UTF-8 text" in refused and "PDk3y" not in refused


def test_a_huge_setting_value_is_quoted_only_in_part():
    """A 5,000-digit retry count was repeated whole in the error; the message now quotes its first 99 characters."""
    refused = _refused({"KEYHEALTH_HTTP_RETRIES": "9" * 5000})
    assert str(refused).startswith("setting KEYHEALTH_HTTP_RETRIES='999") and len(str(refused)) < 200
    assert refused.value == "9" * 5000  # the whole value stays on the error for code that needs it


@pytest.mark.parametrize("prefix", ["kéyhealth", "keyhealth٣", "ǅ"])
def test_a_table_prefix_beyond_ascii_letters_and_digits_is_refused(prefix: str):
    """Azure table names are ASCII letters and digits; Unicode letters passed str.isalnum and failed at first use."""
    refused = _refused({"KEYHEALTH_TABLE_PREFIX": prefix})
    assert refused.setting == "KEYHEALTH_TABLE_PREFIX"
