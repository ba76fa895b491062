"""KEYHEALTH_ALERTS: sinks, routes and the default route; every mistake named by its JSON path."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.app.alert_routes import Route, Router
from monitor.domain.alert import AlertKey, sample_alert
from monitor.domain.errors import AlertConfigError
from monitor.domain.incidents import Level
from monitor.entry.alert_config import parse_alert_config

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ENV = {"TEAMS_URL": "https://example.webhook.office.com/workflows/abc?sig=x", "PD_KEY": "k" * 32}


def _parse(config: Any, environ: dict[str, str] = ENV):
    return parse_alert_config(json.dumps(config), environ)


def test_an_empty_setting_means_the_log_only():
    config = parse_alert_config("", {})
    assert config.sinks == () and config.router == Router()


def test_sinks_read_their_secrets_from_the_settings_they_name():
    config = _parse(
        {
            "sinks": {
                "teams": {"type": "teams", "url_setting": "TEAMS_URL"},
                "pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY", "min_level": "critical"},
            }
        }
    )
    teams, pager = config.sinks
    assert teams.url == ENV["TEAMS_URL"] and pager.routing_key == ENV["PD_KEY"]
    assert pager.min_level is Level.CRITICAL
    assert config.router.default == ("pager", "teams")  # no default given: every sink
    assert ENV["PD_KEY"] not in repr(config) and "sig=x" not in repr(config)


def test_a_file_can_hold_the_configuration(tmp_path: Path):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"sinks": {"hook": {"type": "webhook", "url": "https://hooks.example.com/k"}}}))
    assert [s.name for s in parse_alert_config(f"@{path}", {}).sinks] == ["hook"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sinks": {"x": {"type": "email"}}}, "$.sinks.x.type: expected one of: webhook, teams, slack"),
        ({"sinks": {"x": {"type": "webhook"}}}, "$.sinks.x: needs url or url_setting"),
        ({"sinks": {"x": {"type": "pagerduty"}}}, "$.sinks.x: needs routing_key_setting"),
        ({"sinks": {"x": {"type": "pagerduty", "routing_key": "k"}}}, "$.sinks.x.routing_key: unknown field"),
        ({"sinks": {"x": {"type": "slack", "url": "http://hooks.slack.com/x"}}}, "$.sinks.x.url: expected an https://"),
        ({"sinks": {"x": {"type": "teams", "url_setting": "NOPE"}}}, "the app setting NOPE is not set or empty"),
        ({"sinks": {"x y": {"type": "teams"}}}, "$.sinks.x y: a sink name is 1-64 letters"),
        ({"sinks": {"x": {"type": "slack", "url": "https://a.b/c", "min_level": "high"}}}, "$.sinks.x.min_level"),
        ({"routes": [{"sinks": ["ghost"]}]}, "$.routes[0].sinks[0]: no sink is named 'ghost'"),
        ({"default": []}, "$.default: expected a non-empty list of sink names"),
        ({"sinks": {}, "route": []}, "$.route: unknown field"),
    ],
)
def test_mistakes_are_named_by_their_json_path(config: Any, message: str):
    with pytest.raises(AlertConfigError) as failure:
        _parse(config)
    assert message in str(failure.value)
    assert str(failure.value).startswith("KEYHEALTH_ALERTS: ")


def test_broken_json_and_missing_files_are_reported():
    with pytest.raises(AlertConfigError, match=r"\$: not JSON: Expecting"):
        parse_alert_config("{sinks", {})
    with pytest.raises(AlertConfigError, match=r"cannot read /nonexistent/alerts\.json"):
        parse_alert_config("@/nonexistent/alerts.json", {})


def test_routes_match_namespace_or_key_tags_and_patterns_else_the_default():
    router = Router(
        routes=(
            Route(sinks=("payments",), tags={"Owner": "payments"}),
            Route(sinks=("batch",), namespaces=("sb-batch-*",)),
        ),
        default=("platform",),
        min_levels={"batch": Level.CRITICAL},
    )
    alert = sample_alert(NOW)
    assert router.sinks_for(alert) == ("platform",)  # tagged owner=keyhealth-test: no route matches
    tagged_key = AlertKey(
        key="https://kv/keys/k",
        version=None,
        identity=None,
        usable_now=True,
        reasons_now=(),
        tags={"owner": "payments"},
    )
    assert router.sinks_for(replace(alert, keys=(tagged_key,))) == ("payments",)  # a key's tag routes too
    batch = replace(alert, namespace_name="sb-batch-eu")
    assert router.sinks_for(batch) == ("batch",)  # critical: at the sink's minimum
    assert router.sinks_for(replace(batch, level=Level.WARNING)) == ()  # below it: nobody but the log
