"""Each sink against a real local HTTPS receiver: the payload each service documents, and failures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from monitor.adapters.alerts.eventgrid import EventGridSink
from monitor.adapters.alerts.http import HttpPoster
from monitor.adapters.alerts.pagerduty import PagerDutySink
from monitor.adapters.alerts.slack import SlackSink
from monitor.adapters.alerts.teams import TeamsSink
from monitor.adapters.alerts.webhook import SIGNATURE_HEADER, WebhookSink
from monitor.domain.alert import Alert, sample_alert
from monitor.domain.errors import DeliveryError
from monitor.domain.incidents import Level, Notice
from tests.alerts.receiver import AlertReceiver

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
Receivers = Callable[..., AlertReceiver]


def _send(sink, alert: Alert, poster: HttpPoster | None = None) -> None:
    async def go() -> None:
        try:
            await sink.send(alert, now=NOW)
        finally:
            await sink.close()
            if poster is not None:
                await poster.close()

    asyncio.run(go())


def _resolve_of(alert: Alert) -> Alert:
    document = alert.document()
    document["notice"] = Notice.RESOLVE.value
    return Alert.from_document(document)


def test_the_webhook_posts_the_alert_document_signed_with_hmac_sha256(receivers: Receivers, ca_bundle: str):
    """The body is the alert document plus its wording; the signature verifies with the shared secret."""
    receiver = receivers()
    poster = HttpPoster(ca_bundle=ca_bundle)
    alert = sample_alert(NOW)
    _send(WebhookSink("ops", receiver.url("/hooks/keyhealth"), poster, secret="s3cret"), alert, poster)
    (hit,) = receiver.hits
    expected = "sha256=" + hmac.new(b"s3cret", hit.raw, hashlib.sha256).hexdigest()
    assert hit.headers[SIGNATURE_HEADER] == expected
    assert hit.headers["X-KeyHealth-Delivery"] == alert.id and hit.headers["X-KeyHealth-Notice"] == "open"
    body = hit.body
    assert body["schema"] == "keyhealth.alert/1" and body["id"] == alert.id
    assert body["namespace"]["name"] == "sb-keyhealth-test"
    assert body["namespace"]["portal_url"].startswith("https://portal.azure.com/#resource/subscriptions/")
    assert body["window"] == "2026-11-29T07:00:00Z … 2026-11-29T07:05:00Z (in 6 days 4 hours)"
    assert body["headline"].startswith("[TEST] [CRITICAL] sb-keyhealth-test would go Revoked in 6 days 4 hours")
    assert "az keyvault key rotate" in body["findings"][0]["message"]
    assert Alert.from_document(body) == alert  # the extras do not disturb a consumer that reads the document


def test_pagerduty_triggers_and_resolves_with_one_stable_dedup_key(receivers: Receivers, ca_bundle: str):
    """Events API v2: routing_key, event_action, dedup_key, payload.summary/severity/source; resolve is bare."""
    receiver = receivers(status=202, reply='{"status":"success","message":"Event processed"}')
    alert = sample_alert(NOW)
    for notice in (alert, _resolve_of(alert)):
        poster = HttpPoster(ca_bundle=ca_bundle)
        _send(PagerDutySink("pager", ROUTING_KEY, poster, url=receiver.url("/v2/enqueue")), notice, poster)
    trigger, resolve = (hit.body for hit in receiver.hits)
    assert {hit.path for hit in receiver.hits} == {"/v2/enqueue"}
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == resolve["dedup_key"] == alert.dedup_key and len(alert.dedup_key) <= 255
    payload = trigger["payload"]
    assert payload["severity"] in {"critical", "error", "warning", "info"} and payload["severity"] == "critical"
    assert payload["source"] == "sb-keyhealth-test.servicebus.windows.net"
    assert 0 < len(payload["summary"]) <= 1024 and "would go Revoked" in payload["summary"]
    assert payload["custom_details"]["what_to_do"][0].startswith("CRITICAL key-expiring:")
    assert trigger["links"][0]["href"] == alert.portal_url
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": alert.dedup_key}


def test_teams_gets_an_adaptive_card_in_a_message_attachment(receivers: Receivers, ca_bundle: str):
    """A Workflows/incoming-webhook message: one attachment, an AdaptiveCard 1.4 with facts, steps and a link."""
    receiver = receivers(status=202)
    poster = HttpPoster(ca_bundle=ca_bundle)
    alert = sample_alert(NOW)
    _send(TeamsSink("teams", receiver.url("/workflows/abc"), poster), alert, poster)
    body = receiver.hits[0].body
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert {element["type"] for element in card["body"]} <= {"TextBlock", "FactSet"}
    facts = {f["title"]: f["value"] for f in next(e for e in card["body"] if e["type"] == "FactSet")["facts"]}
    assert facts["Level"] == "critical" and facts["Usable keys"] == "1 of 1 listed keys usable"
    assert facts["Revocation window (UTC)"].endswith("(in 6 days 4 hours)")
    assert any("az keyvault key rotate" in e.get("text", "") for e in card["body"])
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in the Azure portal", "url": alert.portal_url}]


def test_slack_gets_block_kit_within_its_limits(receivers: Receivers, ca_bundle: str):
    """Fallback text plus header, fields, steps, a portal button and context, each inside Block Kit's limits."""
    receiver = receivers(reply="ok")
    poster = HttpPoster(ca_bundle=ca_bundle)
    alert = sample_alert(NOW)
    _send(SlackSink("slack", receiver.url("/services/T000/B000/XXXX"), poster), alert, poster)
    body = receiver.hits[0].body
    assert body["text"] == alert.headline(NOW)
    blocks = body["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "actions", "context"]
    assert blocks[0]["text"]["type"] == "plain_text" and len(blocks[0]["text"]["text"]) <= 150
    assert len(blocks[1]["fields"]) <= 10 and all(len(f["text"]) <= 2000 for f in blocks[1]["fields"])
    assert blocks[2]["text"]["text"].startswith("*What to do*") and len(blocks[2]["text"]["text"]) <= 3000
    assert blocks[3]["elements"][0]["url"] == alert.portal_url
    assert len(blocks) <= 50


def test_event_grid_publishes_cloud_events_with_the_sdk(receivers: Receivers, ca_bundle: str):
    """azure-eventgrid's publisher sends a CloudEvents batch: AtRisk, then Revoked, then Recovered."""
    from azure.core.credentials import AzureKeyCredential

    receiver = receivers()
    alert = sample_alert(NOW)
    revoked_document = alert.document()
    revoked_document["level"] = Level.REVOKED.label
    for notice in (alert, Alert.from_document(revoked_document), _resolve_of(alert)):
        sink = EventGridSink(
            "automation", receiver.url("/api/events"), AzureKeyCredential("eg-key"), ca_bundle=ca_bundle
        )
        _send(sink, notice)
    kinds = []
    for hit in receiver.hits:
        assert hit.path.startswith("/api/events")
        assert hit.headers["Content-Type"].startswith("application/cloudevents-batch+json")
        assert hit.headers["aeg-sas-key"] == "eg-key"
        (event,) = hit.body
        assert event["specversion"] == "1.0" and event["source"] == "keyhealth" and event["id"] == alert.id
        assert event["subject"] == alert.namespace_id and event["data"]["schema"] == "keyhealth.alert/1"
        kinds.append(event["type"])
    assert kinds == ["KeyHealth.NamespaceAtRisk", "KeyHealth.NamespaceRevoked", "KeyHealth.NamespaceRecovered"]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (404, True), (400, False), (413, False)],
)
def test_a_refusal_is_a_delivery_error_that_says_whether_to_retry(
    receivers: Receivers, ca_bundle: str, status: int, retryable: bool
):
    """5xx, 429 and 404 may pass (retry); 400 and 413 reject this content (do not)."""
    receiver = receivers(status=status, reply="invalid_payload")
    poster = HttpPoster(ca_bundle=ca_bundle)
    with pytest.raises(DeliveryError) as failure:
        _send(SlackSink("slack", receiver.url("/services/T000/B000/TOKEN"), poster), sample_alert(NOW), poster)
    assert failure.value.retryable is retryable
    assert failure.value.reason == f"HTTP {status}: invalid_payload"


def test_retry_after_in_seconds_is_passed_on(receivers: Receivers, ca_bundle: str):
    """A 429 with Retry-After: 120 asks the outbox to wait two minutes before the next attempt."""
    receiver = receivers(status=429, headers={"Retry-After": "120"})
    poster = HttpPoster(ca_bundle=ca_bundle)
    with pytest.raises(DeliveryError) as failure:
        _send(WebhookSink("ops", receiver.url(), poster), sample_alert(NOW), poster)
    assert failure.value.retryable and failure.value.retry_after == 120


def test_an_unreachable_or_untrusted_sink_fails_without_naming_its_url(receivers: Receivers, ca_bundle: str):
    """Connection refused and an untrusted certificate are DeliveryErrors whose reason holds no URL or token."""
    receiver = receivers()
    secret_url = receiver.url("/services/T000/B000/SECRETTOKEN")
    untrusted = HttpPoster()  # the system CAs only: the test CA is not among them
    with pytest.raises(DeliveryError) as tls:
        _send(SlackSink("slack", secret_url, untrusted), sample_alert(NOW), untrusted)
    assert tls.value.reason.startswith(("TLS failed", "could not deliver"))
    assert "SECRETTOKEN" not in str(tls.value) and "127.0.0.1" not in str(tls.value)
    port = receiver.port
    receiver.__exit__(None, None, None)
    poster = HttpPoster(ca_bundle=ca_bundle)
    with pytest.raises(DeliveryError) as refused:
        _send(SlackSink("slack", f"https://127.0.0.1:{port}/services/SECRETTOKEN", poster), sample_alert(NOW), poster)
    assert "SECRETTOKEN" not in str(refused.value) and refused.value.retryable
