"""The Functions app, its triggers invoked the way the host invokes them, against the stand-in and a real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.timer import TimerRequest
from azure.keyvault.keys._shared import http_challenge_cache

from function_app import app
from monitor.app.monitor import Monitor
from monitor.domain.model import DeleteKey, SetAccess
from monitor.domain.scenario import parse_scenario
from monitor.entry import functions_host as host
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.builders import SYSTEM_PRINCIPAL, VAULT, key, namespace, ref, scenario, vault

OTHER = "https://kv-other.vault.azure.net"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@cache
def _functions() -> dict[str, Any]:
    """The app's functions by name (get_functions() is called once, as the host does)."""
    return {str(f.get_function_name()): f for f in app.get_functions()}


# The host runs a worker's async functions on one event loop, and the SDK clients the worker keeps
# belong to it: so do these tests.
_LOOP = asyncio.new_event_loop()


def _run(awaitable: Any) -> Any:
    return _LOOP.run_until_complete(awaitable)


def _call(name: str, argument: object) -> Any:
    return _run(_functions()[name].get_user_function()(argument))


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


# An Event Hubs namespace beside the Service Bus ones: the same timer, events and status routes judge it.
EVENT_HUBS = {
    **namespace("eh-other", ref("k3", vault_uri=OTHER)),
    "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-eh-other/providers/"
    "Microsoft.EventHub/namespaces/eh-other",
}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Sandbox, Monitor]]:
    """The stand-in (its clock at the real now) and the worker's Monitor wired to it with a SQLite store."""
    document = scenario(
        [
            namespace("sb-one", ref("k1")),
            namespace("sb-two", ref("k2"), ref("k3", vault_uri=OTHER)),
            namespace("sb-other", ref("k3", vault_uri=OTHER)),
            EVENT_HUBS,
        ],
        [key("k1"), key("k2"), key("k3", vault_uri=OTHER)],
        vaults=[vault(), vault(OTHER)],
        now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    yield from _serving(document, tmp_path)


def _serving(document: dict[str, Any], tmp_path: Path, **settings: str) -> Iterator[tuple[Sandbox, Monitor]]:
    """The stand-in serving `document` and the worker's Monitor wired to it (SQLite), with extra `settings`."""
    parsed, _ = parse_scenario(document)
    with Sandbox(parsed) as sandbox:
        environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"), **settings}
        monitor = build_monitor(Settings.from_environment(environment))
        host.use_monitor(monitor)
        try:
            yield sandbox, monitor
        finally:
            host.use_monitor(None)
            assert monitor.close is not None
            _run(monitor.close())


def _status(name: str | None = None) -> tuple[int, Any]:
    if name is None:
        request = func.HttpRequest("GET", "/api/status", body=b"")
        response = _call("fleet_status", request)
    else:
        request = func.HttpRequest("GET", f"/api/status/{name}", body=b"", route_params={"namespace": name})
        response = _call("namespace_status", request)
    return response.status_code, json.loads(response.get_body())


def _event(event_type: str, vault_uri: str, key_name: str | None, event_id: str = "e-1") -> func.EventGridEvent:
    host_name = vault_uri.removeprefix("https://")
    data: dict[str, object] = {
        "Id": f"{vault_uri}/keys/{key_name}/0123456789abcdef0123456789abcdef" if key_name else f"{vault_uri}/",
        "VaultName": host_name.split(".")[0],
        "ObjectType": "Key" if key_name else "Vault",
        "ObjectName": key_name or host_name.split(".")[0],
    }
    return func.EventGridEvent(
        id=event_id,
        data=data,
        topic=f"/subscriptions/s/resourceGroups/rg-keyvaults/providers/Microsoft.KeyVault/vaults/{host_name.split('.')[0]}",
        subject=key_name or "",
        event_type=event_type,
        event_time=datetime.now(UTC),
        data_version="1",
    )


def test_the_app_declares_its_five_functions():
    """An Event Grid trigger, the poll and alert-delivery timers on their schedule settings, two status routes."""
    functions = _functions()
    assert set(functions) == {"keyvault_events", "poll", "deliver_alerts", "fleet_status", "namespace_status"}
    timer_binding = functions["poll"].get_bindings()[0].get_dict_repr()
    assert timer_binding["type"] == "timerTrigger"
    assert timer_binding["schedule"] == "%KEYHEALTH_POLL_SCHEDULE%"
    delivery_binding = functions["deliver_alerts"].get_bindings()[0].get_dict_repr()
    assert delivery_binding["type"] == "timerTrigger"
    assert delivery_binding["schedule"] == "%KEYHEALTH_DELIVERY_SCHEDULE%"
    assert functions["keyvault_events"].get_bindings()[0].get_dict_repr()["type"] == "eventGridTrigger"


def test_the_timer_polls_the_fleet_and_status_shows_it(running):
    """One timer run reads every namespace; GET /api/status lists them, /api/status/{name} shows one."""
    _call("poll", TimerRequest(past_due=False))
    code, body = _status()
    assert code == 200
    assert {n["name"]: n["status_now"] for n in body["namespaces"]} == {
        "sb-one": "healthy",
        "sb-two": "healthy",
        "sb-other": "healthy",
        "eh-other": "healthy",
    }
    assert {n["name"]: n["kind"] for n in body["namespaces"]}["eh-other"] == "eventhubs"
    code, one = _status("sb-two")
    assert code == 200 and one["usable_keys_now"] == 2
    code, missing = _status("sb-nope")
    assert code == 404 and "sb-nope" in missing["error"]


def test_a_key_deleted_without_an_event_is_found_by_the_next_poll(running):
    """Key Vault sends no event for a delete: the poll finds it."""
    sandbox, _ = running
    _call("poll", TimerRequest())
    sandbox.apply(DeleteKey(at=sandbox.clock.now(), vault=VAULT, key="k1"))
    _call("poll", TimerRequest())
    assert _status("sb-one")[1]["status_now"] == "revoked"


def test_an_access_change_event_re_evaluates_the_vaults_namespaces_in_one_call(running):
    """VaultAccessPolicyChanged re-reads every namespace listing a key of that vault, and only those."""
    sandbox, _ = running
    _call("poll", TimerRequest())
    sandbox.apply(SetAccess(at=sandbox.clock.now(), vault=OTHER, principal=SYSTEM_PRINCIPAL, permissions=frozenset()))
    outcome = _run(host.on_event(_event("Microsoft.KeyVault.VaultAccessPolicyChanged", OTHER, None)))
    assert outcome is not None and outcome.value == "evaluated"
    assert _status("sb-other")[1]["status_now"] == "revoked"
    assert _status("eh-other")[1]["status_now"] == "revoked"  # an Event Hubs namespace, found by the same index
    assert _status("sb-two")[1]["status_now"] == "degraded"
    assert _status("sb-one")[1]["status_now"] == "healthy"


def _final_state() -> dict[str, tuple[object, ...]]:
    return {n["name"]: (n["status_now"], n["usable_keys_now"]) for n in _status()[1]["namespaces"]}


def test_duplicate_and_reordered_deliveries_end_in_the_state_of_one_ordered_delivery(running):
    """The same event three times, then two events in reverse order: the result is what the Key Vault now says."""
    sandbox, _ = running
    _call("poll", TimerRequest())
    sandbox.apply(DeleteKey(at=sandbox.clock.now(), vault=VAULT, key="k2"))
    deleted = _event("Microsoft.KeyVault.KeyNewVersionCreated", VAULT, "k2", "dup-1")
    outcomes = [_call("keyvault_events", deleted) for _ in range(3)]
    assert outcomes == [None, None, None]  # the function returns nothing; the state tells
    once = _final_state()
    assert once["sb-two"] == ("degraded", 1)
    later = _event("Microsoft.KeyVault.KeyExpired", VAULT, "k1", "order-2")
    earlier = _event("Microsoft.KeyVault.KeyNearExpiry", VAULT, "k1", "order-1")
    _call("keyvault_events", later)
    _call("keyvault_events", earlier)
    assert _final_state() == once


def test_unrelated_and_published_events_are_acknowledged(running):
    """The published SecretNewVersionCreated samples, decoded by the Functions converter, are acknowledged."""
    _call("poll", TimerRequest())
    for relative in (
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/event-grid-schema/secret_new_version_created.json",
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/cloud-events-schema/secret_new_version_created.json",
    ):
        text = (FIXTURES / relative).read_text(encoding="utf-8")
        event = EventGridEventInConverter.decode(meta.Datum(text, "json"), trigger_metadata={})
        outcome = _run(host.on_event(event))
        assert outcome is not None and outcome.value == "unrelated"
        _call("keyvault_events", event)


def test_a_malformed_event_is_logged_and_dropped(running, caplog):
    """An event without a type is rejected with a reason in the log; the function does not raise."""
    broken = func.EventGridEvent(
        id="bad-1", data={}, topic="", subject="", event_type="", event_time=None, data_version="1"
    )
    with caplog.at_level("WARNING", logger="keyhealth"):
        _call("keyvault_events", broken)
    assert "rejected event bad-1: event has no type" in caplog.text


@pytest.fixture
def running_observed(tmp_path: Path) -> Iterator[tuple[Sandbox, Monitor]]:
    """As `running`, with KEYHEALTH_AUDIT_LOGS=on (as the infra deploys it): the poll reads the vaults' audit logs."""
    document = scenario(
        [namespace("sb-one", ref("k1")), namespace("sb-own", ref("k2"), principal=OWN_PRINCIPAL)],
        [key("k1"), key("k2")],
        vaults=[vault(access={SYSTEM_PRINCIPAL: ["all"], OWN_PRINCIPAL: ["all"]})],
        now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    yield from _serving(document, tmp_path, KEYHEALTH_AUDIT_LOGS="on")


OWN_PRINCIPAL = "00000000-0000-0000-0000-00000000c0de"


def test_the_timer_poll_reads_the_services_own_calls_and_an_event_keeps_them(running_observed):
    """The Functions timer with the audit logs on: /api/status shows each namespace's observed phase and next poll;
    an event re-judging a namespace from the stored snapshot keeps what the poll observed."""
    _call("poll", TimerRequest(past_due=False))
    code, one = _status("sb-one")
    assert code == 200
    observed = one["observed"]
    assert observed["status"] == "observed" and observed["phase_known"] and observed["next_poll_at"]
    assert [k["last_status"] for k in observed["keys"]] == [200]
    outcome = _run(host.on_event(_event("Microsoft.KeyVault.KeyNewVersionCreated", VAULT, "k1", "obs-1")))
    assert outcome is not None and outcome.value == "evaluated"
    code, again = _status("sb-one")
    assert again["observed"]["phase_seconds"] == observed["phase_seconds"]
    assert again["observed"]["next_poll_at"] is not None
