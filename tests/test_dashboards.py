"""The dashboards in infra/dashboards parse, and query only metrics the code emits (and show them all)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import prometheus_client

from monitor.app import telemetry
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.scenario import parse_scenario
from tests.builders import key, namespace, ref, scenario, version

DASHBOARDS = Path(__file__).resolve().parent.parent / "infra" / "dashboards"


def _emit_everything() -> None:
    """Make every instrument record once, as a poll, an event, a delivery and a remediation do."""
    telemetry.count_poll("ok", 1.5)
    telemetry.HEARTBEAT.saw(datetime.now(UTC))  # the poll-age gauge reports once a poll has been seen
    telemetry.count_event("Microsoft.KeyVault.KeyNearExpiry", "evaluated", 0.2)
    telemetry.count_delivery("ops", "delivered")
    telemetry.count_remediation("rotate", "done")
    telemetry.record_azure_request("keyvault", "GET", "2xx", 0.05)
    parsed, _ = parse_scenario(
        scenario([namespace("sb-dash", ref("k1"))], [key("k1", version("v1", exp="2026-12-01T00:00:00Z"))])
    )
    telemetry.READINGS.record(evaluate(parsed, Thresholds()), whole_fleet=False)


def _prometheus_names() -> set[str]:
    text = prometheus_client.generate_latest().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("keyhealth_")}


def test_the_grafana_dashboard_queries_only_what_is_exported_and_shows_all_of_it():
    _emit_everything()
    dashboard = json.loads((DASHBOARDS / "grafana-keyhealth.json").read_text())
    assert dashboard["uid"] == "keyhealth" and dashboard["panels"]
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bkeyhealth_[a-z_]+", target["expr"])
    }
    exported = _prometheus_names()
    assert queried - exported == set()
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in queried}
    assert families - shown == set()


def test_the_workbook_queries_only_instruments_the_code_defines(emitted):
    _emit_everything()
    workbook = json.loads((DASHBOARDS / "workbook-keyhealth.json").read_text())
    assert workbook["version"] == "Notebook/1.0"
    queries = [item["content"]["query"] for item in workbook["items"] if item["type"] == 3]
    queried = {name for query in queries for name in re.findall(r'name == "(keyhealth\.[a-z_.]+)"', query)}
    instruments = {name for name in emitted.names() if name.startswith("keyhealth.")}
    assert queried and queried - instruments == set()
    assert instruments - queried == set()
