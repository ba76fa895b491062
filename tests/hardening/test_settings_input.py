"""Settings that once raised something other than SettingError: each is now refused with the setting's name."""

from __future__ import annotations

import json

import pytest

from monitor.config import Settings
from monitor.domain.errors import SettingError


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
