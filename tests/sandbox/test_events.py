"""Key Vault events the timeline implies, delivered to a real local webhook as the clock advances."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from monitor.sandbox import Sandbox
from tests.sandbox.clients import raw
from tests.sandbox.receiver import Receiver
from tests.sandbox.world import EXPIRING, KV_PROD, NOW, V1, V4


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    return [r.body[0] for r in receiver.notifications]


def test_changes_fire_their_events_as_the_clock_passes_them(sandbox: Sandbox) -> None:
    """A new_version fires KeyNewVersionCreated and a set_access VaultAccessPolicyChanged, in order, once."""
    with Receiver() as receiver:
        sandbox.deliver_events_to(receiver.url)
        sandbox.flush_events()
        assert receiver.received == []  # nothing is due at the start: the past does not fire
        sandbox.clock.advance(timedelta(hours=4))
        sandbox.flush_events()
        sandbox.clock.advance(timedelta(minutes=1))
        sandbox.flush_events()
    events = _events(receiver)
    assert [e["eventType"] for e in events] == [
        "Microsoft.KeyVault.KeyNewVersionCreated",
        "Microsoft.KeyVault.VaultAccessPolicyChanged",  # kv-prod only: kv-rbac uses RBAC, which fires nothing
    ]
    created = events[0]
    assert created["topic"] == sandbox.vault_resource_id(KV_PROD)
    assert created["subject"] == "sb-cmk"
    assert created["eventTime"].startswith("2026-11-22T02:00:00.")
    assert created["data"]["Id"] == f"{KV_PROD}/keys/sb-cmk/{V4}"
    assert created["data"]["Version"] == V4 and created["data"]["ObjectType"] == "Key"
    assert created["data"]["EXP"] == str(int((NOW + timedelta(days=365)).timestamp()))
    assert events[1]["data"]["ObjectType"] == "Vault" and events[1]["subject"] == "kv-prod"
    assert receiver.notifications[0].headers["aeg-event-type"] == "Notification"


def test_a_rotation_through_the_api_fires_at_once(sandbox: Sandbox) -> None:
    """rotate via the data plane fires KeyNewVersionCreated without the clock moving."""
    with Receiver() as receiver:
        sandbox.deliver_events_to(receiver.url)
        status, _, body = asyncio.run(
            raw(sandbox, "POST", "/keyvault/kv-prod.vault.azure.net/keys/sb-cmk/rotate?api-version=7.5")
        )
        sandbox.flush_events()
    assert status == 200
    [event] = _events(receiver)
    assert event["data"]["Id"] == body["key"]["kid"]


def test_near_expiry_and_expiry_fire_for_the_current_version_only(sandbox: Sandbox) -> None:
    """KeyNearExpiry fires 30 days before the current version's exp and KeyExpired at it; old versions stay silent."""
    with Receiver() as receiver:
        sandbox.deliver_events_to(receiver.url)
        sandbox.clock.set(NOW + timedelta(days=10, hours=1))
        sandbox.flush_events()
        near = _events(receiver)
        sandbox.clock.set(NOW + timedelta(days=41))
        sandbox.flush_events()
    expiry = [e for e in _events(receiver) if e not in near]
    near_types = [(e["eventType"], e["data"]["Version"]) for e in near if "Expir" in e["eventType"]]
    assert near_types == [("Microsoft.KeyVault.KeyNearExpiry", EXPIRING)]  # sb-cmk's V1 expires too, but is not current
    assert [(e["eventType"], e["data"]["Version"]) for e in expiry] == [("Microsoft.KeyVault.KeyExpired", EXPIRING)]
    assert all(e["data"]["Version"] != V1 for e in _events(receiver))


def test_cloudevents_are_delivered_over_https_after_the_handshake(sandbox: Sandbox) -> None:
    """With the CloudEvents schema and handshake, the sandbox sends OPTIONS first, then structured CloudEvents."""
    with Receiver(ssl_context=sandbox.server_ssl_context()) as receiver:
        sandbox.deliver_events_to(receiver.url, "cloudevents", handshake=True)
        sandbox.clock.advance(timedelta(hours=2))
        sandbox.flush_events()
    assert [r.method for r in receiver.received] == ["OPTIONS", "POST"]
    post = receiver.received[1]
    assert post.headers["Content-Type"].startswith("application/cloudevents+json")
    assert post.body["specversion"] == "1.0" and post.body["type"] == "Microsoft.KeyVault.KeyNewVersionCreated"
    assert post.body["source"] == sandbox.vault_resource_id(KV_PROD)


def test_failed_deliveries_are_retried_and_recorded(sandbox: Sandbox) -> None:
    """A webhook answering 500 twice gets the event on the third attempt; the delivery says so."""
    with Receiver(failures=2) as receiver:
        subscription = sandbox.deliver_events_to(receiver.url, backoff=0.01)
        sandbox.clock.advance(timedelta(hours=2))
        sandbox.flush_events()
    [delivery] = subscription.deliveries
    assert delivery.delivered and delivery.attempts == 3 and delivery.status == 200
    assert [r.headers["aeg-delivery-count"] for r in receiver.received] == ["0", "1", "2"]


def test_an_unreachable_webhook_is_recorded_as_undelivered(sandbox: Sandbox) -> None:
    """When nothing listens, each attempt fails and the delivery records the error."""
    with Receiver() as receiver:
        url = receiver.url
    subscription = sandbox.deliver_events_to(url, attempts=2, backoff=0.01)
    sandbox.clock.advance(timedelta(hours=2))
    sandbox.flush_events()
    [delivery] = subscription.deliveries
    assert not delivery.delivered and delivery.attempts == 2 and delivery.error


def test_an_endpoint_that_fails_validation_gets_no_events(sandbox: Sandbox) -> None:
    """With the Event Grid handshake, an endpoint that does not echo the validation code receives no events."""
    with Receiver(validate=False) as receiver:
        subscription = sandbox.deliver_events_to(receiver.url, handshake=True)
        sandbox.clock.advance(timedelta(hours=2))
        sandbox.flush_events()
    assert receiver.notifications == []
    assert [d.error for d in subscription.deliveries] == ["endpoint validation failed"]


def test_a_managed_hsm_fires_nothing_whatever_happens_to_its_keys() -> None:
    """A new version, a near expiry, an expiry and an access change on a Managed HSM: no event, as Azure sends
    none for an HSM (the poll is the only signal); the vault beside it still fires."""
    from monitor.domain.scenario import parse_scenario
    from tests.builders import key, namespace, ref, scenario, vault, version

    hsm = "https://hsm-events.managedhsm.azure.net"
    soon = (NOW + timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = scenario(
        [namespace("sb-hsm", ref("k-hsm", vault_uri=hsm)), namespace("sb-kv", ref("k-kv"))],
        [key("k-hsm", version("h1", kty="RSA-HSM", exp=soon), vault_uri=hsm), key("k-kv", version("k1", exp=soon))],
        vaults=[vault(hsm, rbac=True), vault()],
        changes=[
            {"at": "2026-11-22T01:00:00Z", "op": "set_access", "vault": hsm, "principal": "p-x", "permissions": []},
            {
                "at": "2026-11-22T01:00:00Z",
                "op": "new_version",
                "vault": hsm,
                "key": "k-hsm",
                "version": {"version": "h2"},
            },
        ],
    )
    document["now"] = "2026-11-22T00:00:00Z"
    with Sandbox(parse_scenario(document)[0]) as running, Receiver() as receiver:
        running.deliver_events_to(receiver.url)
        running.clock.set(NOW + timedelta(days=40))
        running.flush_events()
    assert {e["subject"] for e in _events(receiver)} == {"k-kv"}
