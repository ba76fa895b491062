"""Settings under generated environments: every value is taken or refused as a SettingError naming the
setting, and no planted secret ever shows in an error or a repr."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from monitor.domain.errors import SettingError
from monitor.entry.config import SETTINGS, Settings
from tests.hardening.fuzzing import NASTY_TEXT, examples, json_values, record

SECRET_MARK = "PLANTEDs3cret"
# What an environment variable can hold: no NUL; bytes that are not UTF-8 arrive as surrogates \udc80-\udcff.
ENV_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00") | st.sampled_from("\udc80\udcff"),
    max_size=40,
)
PLAUSIBLE = {
    "KEYHEALTH_WARNING_DAYS": ["30", "0.5", "-1", "3651", "nan", "inf", "1e3", "thirty"],
    "KEYHEALTH_CRITICAL_DAYS": ["7", "40", "0", "x"],
    "KEYHEALTH_SUBSCRIPTIONS": ["a,b", "a;b", "/subscriptions/x", "a b", " , "],
    "KEYHEALTH_ARM_ENDPOINT": ["https://management.azure.com", "http://x", "https://", "https://[::1", "ftp://x"],
    "KEYHEALTH_KEYVAULT_ENDPOINT": ["https://127.0.0.1:8443/keyvault", "https://[::1]:1/x", "not a url"],
    "KEYHEALTH_CA_BUNDLE": ["/nonexistent/ca.pem", "/etc/hostname", "a" * 5000, "/"],
    "KEYHEALTH_HTTP_RETRIES": ["0", "10", "11", "-1", "1.5", "9" * 5000],
    "KEYHEALTH_HTTP_TIMEOUT_SECONDS": ["1", "0.5", "600", "601", "1e-9"],
    "KEYHEALTH_POLL_SCHEDULE": ["0 */5 * * * *", "* * * * *", "0 */5 * * * * *", "a b c d e f"],
    "KEYHEALTH_STATE_STORE": ["sqlite", "tables", "TABLES", "redis"],
    "KEYHEALTH_TABLES_ENDPOINT": ["https://acct.table.core.windows.net", "http://x"],
    "KEYHEALTH_TABLE_PREFIX": ["keyhealth", "k", "1abc", "kéy", "a" * 42],
    "KEYHEALTH_CONCURRENCY": ["1", "1024", "0", "1025"],
    "KEYHEALTH_ALERT_RENOTIFY_HOURS": ["0", "4", "721"],
    "KEYHEALTH_ALERT_RETRY_SECONDS": ["1", "0", "3601"],
    "KEYHEALTH_ALERT_GIVE_UP_HOURS": ["0.01", "0", "721"],
    "KEYHEALTH_DELIVERY_SCHEDULE": ["*/15 * * * * *", "*/15"],
    "KEYHEALTH_PORTAL_URL": ["https://portal.azure.com", "portal"],
    "KEYHEALTH_REMEDIATION": ["off", "dry-run", "on", "yes"],
    "KEYHEALTH_REMEDIATION_ACTIONS": ["rotate,recover", "unpin", "rotate,delete", ","],
    "KEYHEALTH_REMEDIATION_KEYS": ["kv/*", ",,"],
    "KEYHEALTH_REMEDIATION_ROTATE_DAYS": ["7", "0", "366"],
    "KEYHEALTH_REMEDIATION_MAX_PER_HOUR": ["10", "0", "1001"],
}
NASTY_ENV_TEXT = [text for text in NASTY_TEXT if "\x00" not in text]
SETTING_NAMES = {spec.name for spec in SETTINGS.values()}
SECRET_SETTINGS = [spec.name for spec in SETTINGS.values() if spec.secret]


@st.composite
def alert_configurations(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """KEYHEALTH_ALERTS (JSON, sometimes mangled) and the app settings its sinks name, holding planted secrets."""
    secrets = {f"SINK_SECRET_{i}": f"{SECRET_MARK}-sink-{i}" for i in range(3)}
    sinks: dict[str, Any] = {
        "hook": {"type": "webhook", "url": "https://ops.example.com/h", "secret_setting": "SINK_SECRET_0"},
        "pager": {"type": "pagerduty", "routing_key_setting": "SINK_SECRET_1", "min_level": "critical"},
        "slack": {"type": "slack", "url_setting": "SINK_SECRET_2"},
    }
    secrets["SINK_SECRET_2"] = f"https://hooks.slack.com/services/{SECRET_MARK}-slack"
    config: Any = {"sinks": dict(sinks), "routes": [{"tags": {"owner": "x"}, "sinks": ["pager"]}], "default": ["hook"]}
    for _ in range(draw(st.integers(0, 3))):  # replace some part with a hostile value
        where = draw(st.sampled_from(["root", "sinks", "sink", "routes", "default", "secret"]))
        value = draw(json_values)
        if where == "root":
            config = value
        elif isinstance(config, dict) and where in {"sinks", "routes", "default"}:
            config[where] = value
        elif isinstance(config, dict) and isinstance(config.get("sinks"), dict) and config["sinks"] and where == "sink":
            name = draw(st.sampled_from(sorted(config["sinks"])))
            config["sinks"][name] = value if draw(st.booleans()) else {**sinks.get(name, {}), "type": value}
        elif where == "secret":
            secrets[draw(st.sampled_from(sorted(secrets)))] = draw(st.sampled_from(["", " ", "x\udcff"]))
    text = json.dumps(config)
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut short
    return text, secrets


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    environment: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=6, unique=True)):
        hostile = draw(st.integers(0, 3)) == 0
        values = ENV_TEXT | st.sampled_from(NASTY_ENV_TEXT) if hostile else st.sampled_from(PLAUSIBLE[name])
        environment[name] = draw(values)
    for name in SECRET_SETTINGS:  # secrets are always planted, so a leak cannot hide
        environment[name] = f"{SECRET_MARK}-{name}" + ("\udcff" if draw(st.integers(0, 7)) == 0 else "")
    if draw(st.booleans()):
        environment["KEYHEALTH_ALERTS"], sink_secrets = draw(alert_configurations())
        environment.update(sink_secrets)
    return environment


@examples(default=300, extended=10_000)
@given(environments())
def test_settings_are_taken_or_refused_by_name_and_never_show_a_secret(environment: dict[str, str]):
    """Settings.from_environment returns Settings or raises SettingError naming a setting; secrets stay hidden."""
    figures = record("settings", environments=1)
    try:
        settings = Settings.from_environment(environment)
    except SettingError as error:
        figures["refused with the setting named"] += 1
        text = str(error)
        assert (text.startswith("setting KEYHEALTH_") and error.setting in environment) or error.setting in {
            spec.name for spec in SETTINGS.values()
        }
        assert SECRET_MARK not in text and SECRET_MARK not in repr(error)
        text.encode("utf-8")  # printable and loggable as it is
        return
    except Exception as error:
        figures["unhandled exceptions"] += 1
        raise AssertionError(f"Settings.from_environment raised {type(error).__name__}: {error}") from error
    figures["accepted"] += 1
    shown = repr(settings) + repr(settings.alert_config) + "".join(repr(s) for s in settings.alert_config.sinks)
    assert SECRET_MARK not in shown
