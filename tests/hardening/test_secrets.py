"""Planted secrets never reach a log line, an HTTP answer, stored state or an exception, whatever fails.

Planted: the webhook secret `serve` requires, the static bearer token sent to the stand-in, a Table Storage
connection string (account key, and a SAS signature), and every sink secret (webhook URL token and signing
secret, Slack and Teams URL tokens, the PagerDuty routing key, the Event Grid key). Then everything fails that
can: the vaults answer the monitor 403 and 500, every sink answers 500 and echoes what it was sent (as careless
services do), then stops answering at all; unauthenticated and wrongly keyed requests hit `serve`; the Table
store is unreachable or refuses the key. All logs at DEBUG (the Azure SDKs' included), stdout and stderr, the
answers, the store's rows, and str/repr of every exception and object along the way are searched for them.

Already shown elsewhere: sink secrets when every sink fails (tests/alerts/test_secrets.py), the webhook secret
in serve's access log (tests/entry/test_serve.py::test_the_secret_is_required_when_set).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.app.poll import deliver_alerts, poll
from monitor.entry.bootstrap import build_monitor
from monitor.entry.cli import main
from monitor.entry.config import Settings
from monitor.entry.serve import Server
from monitor.sandbox import Sandbox
from tests.alerts.receiver import AlertReceiver
from tests.builders import key_event
from tests.hardening.fuzzing import record
from tests.hardening.support import OTHER, VAULT, fleet_document, parsed

MARK = "PLANTEDs3cr3t"
SECRETS = {
    "KEYHEALTH_WEBHOOK_SECRET": f"{MARK}-webhook-0001",
    "KEYHEALTH_STATIC_TOKEN": f"{MARK}-bearer-0002",
    "HOOK_URL_TOKEN": f"{MARK}-hookpath-0003",
    "HOOK_SECRET": f"{MARK}-hmac-0004",
    "SLACK_TOKEN": f"{MARK}-slack-0005",
    "TEAMS_SIG": f"{MARK}-teams-0006",
    "PD_KEY": f"{MARK}-pagerduty-0007",
    "EG_KEY": f"{MARK}-eventgrid-0008",
}
# An account key is base64; planted so its text is easy to find (and decodes to the mark).
ACCOUNT_KEY = "UExBTlRFRHMzY3IzdC1hY2NvdW50LWtleS0wMDA5UExBTlRFRHMzY3IzdA=="
SAS_SIGNATURE = f"{MARK}-sas-0010"


def _leaks(text: str) -> list[str]:
    found = [name for name, value in SECRETS.items() if value in text]
    found += ["account key"] if ACCOUNT_KEY in text or ACCOUNT_KEY[:24] in text else []
    found += ["SAS signature"] if SAS_SIGNATURE in text else []
    return found + (["the mark"] if MARK in text and not found else [])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def careless_receiver() -> Iterator[AlertReceiver]:
    """Answers 500 and repeats the request's path and body in its error, as careless services do."""
    import ssl

    with AlertReceiver(ssl.create_default_context(), plain_http=True, status=500, echo=True) as receiver:
        yield receiver


def _sink_environment(receiver: AlertReceiver) -> dict[str, str]:
    config = {
        "sinks": {
            "hook": {"type": "webhook", "url_setting": "HOOK_URL", "secret_setting": "HOOK_SECRET"},
            "slack": {"type": "slack", "url_setting": "SLACK_URL"},
            "teams": {"type": "teams", "url_setting": "TEAMS_URL"},
            "pager": {"type": "pagerduty", "routing_key_setting": "PD_KEY", "url": receiver.url("/v2/enqueue")},
            "events": {"type": "eventgrid", "endpoint": receiver.url("/api/events"), "key_setting": "EG_KEY"},
        }
    }
    return {
        "KEYHEALTH_ALERTS": json.dumps(config),
        "HOOK_URL": receiver.url(f"/hooks/{SECRETS['HOOK_URL_TOKEN']}"),
        "HOOK_SECRET": SECRETS["HOOK_SECRET"],
        "SLACK_URL": receiver.url(f"/services/T0/B0/{SECRETS['SLACK_TOKEN']}"),
        "TEAMS_URL": receiver.url(f"/workflows/run?sig={SECRETS['TEAMS_SIG']}"),
        "PD_KEY": SECRETS["PD_KEY"],
        "EG_KEY": SECRETS["EG_KEY"],
    }


def test_no_secret_leaks_from_serve_when_vaults_sinks_and_callers_misbehave(
    tmp_path: Path,
    careless_receiver: AlertReceiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
):
    """serve in this process, everything failing around it, every log at DEBUG: no planted value anywhere."""
    texts: list[str] = []
    key = SECRETS["KEYHEALTH_WEBHOOK_SECRET"]

    async def run() -> None:
        async with Sandbox(parsed(fleet_document())) as sandbox:
            environment = {
                **sandbox.environment(),
                **_sink_environment(careless_receiver),
                "KEYHEALTH_STATIC_TOKEN": SECRETS["KEYHEALTH_STATIC_TOKEN"],
                "KEYHEALTH_WEBHOOK_SECRET": key,
                "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"),
                "KEYHEALTH_HTTP_RETRIES": "1",
                "KEYHEALTH_HTTP_TIMEOUT_SECONDS": "2",
                "KEYHEALTH_ALERT_RETRY_SECONDS": "1",
            }
            sandbox.faults.forbid(OTHER)  # the monitor's own 403, with Key Vault's wording
            sandbox.faults.respond(500, service="keyvault", vault=VAULT, path="/keys/k-soon")
            settings = Settings.from_environment(environment)
            texts.extend([repr(settings), str(settings), repr(settings.alert_config)])
            monitor = build_monitor(settings)
            texts.extend([repr(monitor), repr(monitor.store), *(repr(s) for s in monitor.sinks.values())])
            server = Server(monitor, schedule=settings.poll_schedule, secret=key, now=sandbox.clock.now)
            url = await server.start("127.0.0.1", 0)
            try:
                await server.poll_if_due()
                import aiohttp

                async with aiohttp.ClientSession() as session:

                    async def call(method: str, path: str, **options: Any) -> None:
                        async with session.request(method, url + path, **options) as reply:
                            texts.append(f"{reply.status} {dict(reply.headers)} {await reply.text()}")

                    event = [key_event("Microsoft.KeyVault.KeyNewVersionCreated", OTHER, "k3", "s-1")]
                    await call("POST", "/api/events", json=event)  # no key: 401
                    await call("POST", "/api/events?code=wrong", json=event)  # wrong key: 401
                    await call("POST", f"/api/events?code={key}", json=event)  # the 403 vault, handled: 200
                    await call("POST", "/api/events", json=event, headers={"x-keyhealth-key": key})
                    await call(
                        "POST",
                        f"/api/events?code={key}",
                        data=b"{not json",
                        headers={"Content-Type": "application/json"},
                    )
                    await call("GET", f"/status?code={key}")
                    await call("GET", "/metrics", headers={"x-keyhealth-key": key})
                    await call("GET", "/healthz")
                for _ in range(2):  # every sink fails and echoes; then nothing answers at all
                    report = await server.deliver_now()
                    texts.append(report.describe() if report else "delivery failed")
                    sandbox.clock.advance(__import__("datetime").timedelta(minutes=1))
                careless_receiver.__exit__(None, None, None)
                report = await server.deliver_now()
                texts.append(report.describe() if report else "delivery failed")
                texts.extend(entry.last_error or "" for entry in await monitor.store.list_outbox())
                texts.append(json.dumps((await server.health())[1]))
            finally:
                await server.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    out, err = capfd.readouterr()
    assert len(careless_receiver.hits) >= 5, "the sinks were never tried"
    assert "refused POST /api/events (401)" in caplog.text and "HTTP 403" in caplog.text + "".join(texts)
    with sqlite3.connect(tmp_path / "state.sqlite") as connection:  # what serve stored, errors included
        stored = "\n".join(
            str(row)
            for table in ("namespace_state", "incident", "outbox", "lease", "snapshot", "processed_event")
            for row in connection.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
        )
    everything = "\n".join([caplog.text, out, err, stored, *texts])
    loggers = Counter(r.name.split(".")[0] for r in caplog.records)
    record("secrets", **{"log records searched": len(caplog.records), "characters searched": len(everything)})
    record("secrets", **{f"{name} log records": count for name, count in loggers.items()})
    assert _leaks(everything) == []


@pytest.mark.parametrize(
    "connection_string",
    [
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        "TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        "TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;SharedAccessSignature=sv=2019-02-02&ss=t&sig={sas}",
        "AccountName=devstoreaccount1;AccountKey={key};this is not a connection string",
    ],
    ids=["account-key-unreachable", "sas-unreachable", "malformed"],
)
def test_no_table_storage_credential_leaks_when_the_store_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], connection_string: str
):
    """A Table store that cannot be reached (or a connection string that cannot be read): the poll fails,
    /healthz says why, serve keeps running; the key or signature is in none of it."""
    text = connection_string.format(key=ACCOUNT_KEY, port=_free_port(), sas=SAS_SIGNATURE)
    texts: list[str] = []

    async def run() -> None:
        async with Sandbox(parsed(fleet_document())) as sandbox:
            environment = {
                **sandbox.environment(),
                "KEYHEALTH_STATE_STORE": "tables",
                "KEYHEALTH_TABLES_CONNECTION_STRING": text,
                "KEYHEALTH_HTTP_RETRIES": "0",
            }
            settings = Settings.from_environment(environment)
            texts.extend([repr(settings), str(settings)])
            try:
                monitor = build_monitor(settings)
            except Exception as error:  # a connection string that cannot be read fails here
                texts.extend([str(error), repr(error), repr(error.__cause__), repr(error.__context__)])
                return
            texts.append(repr(monitor.store))
            try:
                await poll(monitor, now=sandbox.clock.now())
            except Exception as error:
                texts.extend([str(error), repr(error), repr(error.__cause__), repr(error.__context__)])
            try:
                await deliver_alerts(monitor, now=sandbox.clock.now())
            except Exception as error:
                texts.extend([str(error), repr(error), repr(error.__cause__)])
            assert monitor.close is not None
            await monitor.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    out, err = capfd.readouterr()
    everything = "\n".join([caplog.text, out, err, *texts])
    record("secrets", **{"table store failures": 1, "characters searched": len(everything)})
    assert _leaks(everything) == []


def test_no_secret_leaks_from_the_command_line_when_everything_fails(
    monkeypatch: pytest.MonkeyPatch, careless_receiver: AlertReceiver, capfd: pytest.CaptureFixture[str]
):
    """`keyhealth check` against vaults that refuse the monitor, and `keyhealth alerts test` to sinks that fail
    and echo: what they print names the failures, never a secret."""
    texts = []
    with Sandbox(parsed(fleet_document())) as sandbox:
        for name, value in {**sandbox.environment(), **_sink_environment(careless_receiver)}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_STATIC_TOKEN", SECRETS["KEYHEALTH_STATIC_TOKEN"])
        monkeypatch.setenv("KEYHEALTH_WEBHOOK_SECRET", SECRETS["KEYHEALTH_WEBHOOK_SECRET"])
        monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "0")
        sandbox.faults.forbid(OTHER)
        sandbox.faults.respond(500, service="arm", path="/roleAssignments")
        for argv in (["check", "--format", "json"], ["check"], ["alerts", "test"]):
            out, err = io.StringIO(), io.StringIO()
            status = main(argv, stdout=out, stderr=err)
            texts += [str(status), out.getvalue(), err.getvalue()]
    captured = capfd.readouterr()
    everything = "\n".join([*texts, captured.out, captured.err])
    assert "FAILED: HTTP 500" in everything and "HTTP 403" in everything
    assert _leaks(everything) == []
