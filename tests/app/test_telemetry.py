"""The instruments after a poll and an event against the stand-in, read through an in-memory reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.app.events import handle_event
from monitor.app.poll import poll
from monitor.domain.documents import format_instant
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.formats.events import KeyVaultEvent, parse_event
from monitor.sandbox import Sandbox
from tests.builders import VAULT, key, namespace, ref, scenario, version

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def test_a_poll_and_an_event_set_every_instrument(tmp_path: Path, emitted):
    document = scenario(
        [
            namespace("sb-ok", ref("k-ok")),
            namespace("sb-soon", ref("k-soon")),
            namespace("sb-two", ref("k-ok"), ref("k-off")),
        ],
        [
            key("k-ok"),
            key("k-soon", version("v1", exp=format_instant(NOW + timedelta(days=3)))),
            key("k-off", version("v1", enabled=False)),
        ],
        now=format_instant(NOW),
    )
    parsed, _ = parse_scenario(document)
    polls_before = emitted.value("keyhealth.polls", outcome="ok")
    near = "Microsoft.KeyVault.KeyNearExpiry"
    events_before = emitted.value("keyhealth.events", event_type=near, outcome="evaluated")

    async def run() -> None:
        with Sandbox(parsed) as sandbox:
            environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
            monitor = build_monitor(Settings.from_environment(environment))
            try:
                await poll(monitor, now=NOW)
                event = parse_event(
                    {
                        "id": "e-1",
                        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-test",
                        "subject": "k-soon",
                        "eventType": near,
                        "eventTime": NOW.isoformat(),
                        "data": {
                            "Id": f"{VAULT}/keys/k-soon/0123456789abcdef0123456789abcdef",
                            "VaultName": "kv-test",
                            "ObjectType": "Key",
                            "ObjectName": "k-soon",
                        },
                        "dataVersion": "1",
                        "metadataVersion": "1",
                    }
                )
                assert isinstance(event, KeyVaultEvent)
                await handle_event(monitor, event, now=NOW + timedelta(hours=1))
            finally:
                assert monitor.close is not None
                await monitor.close()

    asyncio.run(run())

    def gauge(name: str, **attributes: Any) -> float:
        return float(emitted.value(name, **attributes))

    assert emitted.value("keyhealth.polls", outcome="ok") - polls_before == 1
    assert emitted.value("keyhealth.events", event_type=near, outcome="evaluated") - events_before == 1
    assert emitted.count("keyhealth.poll.duration") >= 1 and emitted.count("keyhealth.event.duration") >= 1
    labels = {"subscription": SUBSCRIPTION}
    # sb-soon was re-judged by the event an hour later: 3 days less one hour to go.
    assert gauge("keyhealth.namespace.revocation.seconds", namespace="sb-soon", **labels) == 3 * 86400 - 3600
    assert emitted.points("keyhealth.namespace.revocation.seconds", namespace="sb-ok") == 0  # none predicted
    assert gauge("keyhealth.namespace.usable_keys", namespace="sb-two") == 1
    assert gauge("keyhealth.namespace.listed_keys", namespace="sb-two") == 2
    assert gauge("keyhealth.namespace.status", namespace="sb-two", status="degraded") == 1
    assert gauge("keyhealth.namespace.status", namespace="sb-two", status="healthy") == 0
    assert gauge("keyhealth.namespace.status", namespace="sb-ok", status="healthy") == 1
    assert gauge("keyhealth.key.expiry.seconds", vault="kv-test", key="k-soon") == 3 * 86400 - 3600
    assert gauge("keyhealth.monitor.blind") == 0
    # Every Azure request attempt is timed, by API, method and status class.
    assert emitted.count("keyhealth.azure.request.duration", api="keyvault", method="GET", status="2xx") >= 3
    assert emitted.count("keyhealth.azure.request.duration", api="arm.resourcegraph", status="2xx") >= 1


def test_the_heartbeat_gauge_is_the_age_of_the_last_complete_poll_by_any_instance(
    tmp_path: Path, emitted, monkeypatch: pytest.MonkeyPatch
):
    """`keyhealth.poll.age`: absent before any poll; after instance A's poll, seconds since it (rising with
    wall time while nobody polls); instance B, whose poll is skipped while A holds the lease, reports A's."""
    import dataclasses

    from monitor.app import poll as polling
    from monitor.app import telemetry
    from monitor.app.monitor import POLL_LEASE

    heartbeat = telemetry.PollHeartbeat()
    monkeypatch.setattr(telemetry, "HEARTBEAT", heartbeat)
    monkeypatch.setattr(polling, "HEARTBEAT", heartbeat)
    parsed, _ = parse_scenario(scenario([namespace("sb-ok", ref("k-ok"))], [key("k-ok")], now=format_instant(NOW)))
    polled_at = datetime.now(UTC) - timedelta(minutes=10)
    ages: list[int] = []

    async def run() -> None:
        with Sandbox(parsed) as sandbox:
            environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
            a = dataclasses.replace(build_monitor(Settings.from_environment(environment)), instance="a")
            b = dataclasses.replace(build_monitor(Settings.from_environment(environment)), instance="b")
            try:
                ages.append(emitted.points("keyhealth.poll.age"))
                assert (await poll(a, now=polled_at)).ran
                ages.append(round(emitted.value("keyhealth.poll.age")))
                monkeypatch.setattr(telemetry, "HEARTBEAT", fresh := telemetry.PollHeartbeat())
                monkeypatch.setattr(polling, "HEARTBEAT", fresh)
                await a.store.acquire_lease(POLL_LEASE, "a", timedelta(minutes=4), now=datetime.now(UTC))
                assert not (await poll(b, now=polled_at + timedelta(minutes=5))).ran
                ages.append(round(emitted.value("keyhealth.poll.age")))
            finally:
                for monitor in (a, b):
                    assert monitor.close is not None
                    await monitor.close()

    asyncio.run(run())
    assert ages[0] == 0  # no series before a poll: no made-up age
    assert 600 <= ages[1] <= 660
    assert 600 <= ages[2] <= 660  # B follows A's mark, not its own skipped poll


def test_a_poll_is_a_span_with_its_azure_calls_as_children_and_logs_carry_its_trace(tmp_path: Path):
    import logging

    from monitor.app.telemetry import TRACER, TraceContextFilter
    from tests.conftest import SPANS

    parsed, _ = parse_scenario(scenario([namespace("sb-one", ref("k1"))], [key("k1")], now=format_instant(NOW)))
    SPANS.clear()

    async def run() -> None:
        with Sandbox(parsed) as sandbox:
            environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
            monitor = build_monitor(Settings.from_environment(environment))
            try:
                await poll(monitor, now=NOW)
            finally:
                assert monitor.close is not None
                await monitor.close()

    asyncio.run(run())
    spans = SPANS.get_finished_spans()
    (polled,) = [s for s in spans if s.name == "keyhealth.poll"]
    assert polled.attributes is not None and polled.attributes["keyhealth.outcome"] == "ok"
    assert polled.attributes["keyhealth.namespaces"] == 1
    children = [s for s in spans if s.parent is not None and s.context.trace_id == polled.context.trace_id]
    assert any("get_key" in s.name.lower() or "getkey" in s.name.lower() for s in children), [s.name for s in spans]

    record = logging.LogRecord("keyhealth", logging.INFO, __file__, 1, "inside", None, None)
    with TRACER.start_as_current_span("probe") as probe:
        TraceContextFilter().filter(record)
    assert record.trace_id == f"{probe.get_span_context().trace_id:032x}"  # type: ignore[attr-defined]


def test_otlp_export_goes_to_the_configured_endpoint(receivers_http):
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, metrics and spans are POSTed there as OTLP/protobuf."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from monitor.entry.bootstrap import telemetry_providers

    meter_provider, tracer_provider = telemetry_providers(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receivers_http.url("")}, prometheus=False
    )
    meter_provider.get_meter("keyhealth").create_counter("keyhealth.polls").add(1, {"outcome": "ok"})
    with tracer_provider.get_tracer("keyhealth").start_as_current_span("keyhealth.poll"):
        pass
    meter_provider.force_flush()
    tracer_provider.force_flush()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    by_path = {hit.path: hit.raw for hit in receivers_http.hits}
    sent_metrics = ExportMetricsServiceRequest.FromString(by_path["/v1/metrics"])
    names = {m.name for r in sent_metrics.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert "keyhealth.polls" in names
    sent_spans = ExportTraceServiceRequest.FromString(by_path["/v1/traces"])
    assert [s.name for r in sent_spans.resource_spans for ss in r.scope_spans for s in ss.spans] == ["keyhealth.poll"]


def _app_insights_environ(receiver: Any) -> dict[str, str]:
    import os

    receiver.reply = json.dumps({"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
    environ = {
        **os.environ,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            f"InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint={receiver.url('/')}"
        ),
        # No calls home to Microsoft from a test; every span kept (the distro's default sampler is rate-limited).
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return environ


def _envelopes(receiver: Any) -> list[dict[str, Any]]:
    import gzip

    envelopes = []
    for hit in receiver.hits:
        assert hit.path.endswith("/v2.1/track"), hit.path
        body = gzip.decompress(hit.raw) if hit.headers.get("Content-Encoding") == "gzip" else hit.raw
        envelopes.extend(json.loads(body))
    return envelopes


def _run_python(args: list[str], environ: dict[str, str]) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False, env=environ
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_azure_monitor_export_when_a_connection_string_is_set(receivers_http):
    """The demo in a fresh process with APPLICATIONINSIGHTS_CONNECTION_STRING pointing at a local ingestion
    stand-in: the distro sends our metrics (with their attributes) and the poll spans as Application Insights
    envelopes."""
    _run_python(["-m", "monitor", "demo", "--pace", "0", "--metrics"], _app_insights_environ(receivers_http))
    envelopes = _envelopes(receivers_http)
    metrics = {
        (metric["name"], tuple(sorted(e["data"]["baseData"].get("properties", {}).items())))
        for e in envelopes
        if e["data"]["baseType"] == "MetricData"
        for metric in e["data"]["baseData"]["metrics"]
    }
    assert ("keyhealth.polls", (("outcome", "ok"),)) in metrics
    assert ("keyhealth.namespace.status", (("namespace", "sb-billing"), ("status", "revoked"))) in {
        (name, tuple(p for p in props if p[0] in {"namespace", "status"})) for name, props in metrics
    }
    assert {"keyhealth.poll", "keyhealth.event"} <= {
        e["data"]["baseData"]["name"] for e in envelopes if e["data"]["baseType"] == "RemoteDependencyData"
    }
    ours = [e for e in envelopes if "keyhealth." in json.dumps(e["data"]["baseData"])]
    assert {e["tags"]["ai.cloud.role"] for e in ours} == {"keyhealth"}  # service.name; the distro's own stats aside


def test_azure_monitor_gets_our_log_records_tied_to_their_trace(receivers_http):
    """A `keyhealth` log record written inside a span arrives as a trace message carrying that span's operation id;
    other libraries' records stay out."""
    script = """
import logging
from monitor.entry.bootstrap import configure_telemetry
from monitor.app.telemetry import TRACER
assert configure_telemetry(prometheus=False)
logging.getLogger("keyhealth.service").warning("poll could not list subscription s-1")
with TRACER.start_as_current_span("keyhealth.poll") as span:
    logging.getLogger("keyhealth").warning("trace=%032x", span.get_span_context().trace_id)
    logging.getLogger("azure.core").warning("not ours")
"""
    _run_python(["-c", script], _app_insights_environ(receivers_http))
    messages = {
        e["data"]["baseData"]["message"]: e["tags"].get("ai.operation.id")
        for e in _envelopes(receivers_http)
        if e["data"]["baseType"] == "MessageData"
    }
    assert "not ours" not in messages
    assert "poll could not list subscription s-1" in messages
    (traced,) = [m for m in messages if m.startswith("trace=")]
    assert messages[traced] == traced.removeprefix("trace=")
