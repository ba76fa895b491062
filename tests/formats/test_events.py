"""Key Vault Event Grid events parse as published, in both schemas, and bad ones are rejected with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.domain.errors import EventBodyError
from monitor.formats.events import (
    KeyVaultEvent,
    KeyVaultEventType,
    RejectedEvent,
    Schema,
    SubscriptionValidation,
    parse_delivery,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PUBLISHED = [
    (
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/event-grid-schema/secret_new_version_created.json",
        Schema.EVENT_GRID,
    ),
    (
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/cloud-events-schema/secret_new_version_created.json",
        Schema.CLOUD_EVENTS,
    ),
    (
        "microsoftdocs-azure-docs/event-schema-key-vault_05b33dd/eventgrid-schema_SecretNewVersionCreated.json",
        Schema.EVENT_GRID,
    ),
    (
        "microsoftdocs-azure-docs/event-schema-key-vault_05b33dd/cloudevents-schema_SecretNewVersionCreated.json",
        Schema.CLOUD_EVENTS,
    ),
    (
        "microsoftdocs-azure-docs/event-schema-key-vault_38285e0/eventgrid-schema_SecretNewVersionCreated.json",
        Schema.EVENT_GRID,
    ),
]


@pytest.mark.parametrize(("relative", "schema"), PUBLISHED, ids=[p for p, _ in PUBLISHED])
def test_every_published_sample_parses_to_the_same_event(relative, schema):
    """PascalCase, camelCase, stray spaces and string NBF/EXP all read as one event."""
    (event,) = parse_delivery((FIXTURES / relative).read_bytes())
    assert isinstance(event, KeyVaultEvent)
    assert event.schema is schema
    assert event.id == "00eccf70-95a7-4e7c-8299-2eb17ee9ad64"
    assert event.event_type == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert event.kind is None  # a secret: nothing to do with keys
    assert event.vault_uri == "https://sample-kv.vault.azure.net"
    assert event.object_name == "newsecret"
    assert event.version == "ee059b2bb5bc48398a53b168c6cdcb10"
    assert event.nbf == datetime.fromtimestamp(1559081980, tz=UTC)
    assert event.exp == datetime.fromtimestamp(1559082102, tz=UTC)
    assert event.time == datetime(2019, 7, 25, 1, 8, 33, 103673, tzinfo=UTC)
    assert event.topic is not None and event.topic.endswith("/vaults/sample-kv")


def test_the_validation_handshake_is_recognised():
    """The published SubscriptionValidationEvent yields its code."""
    path = FIXTURES / "microsoftdocs-azure-docs/end-point-validation-event-grid-events-schema_2179f4c"
    (event,) = parse_delivery((path / "SubscriptionValidationEvent.json").read_bytes())
    assert isinstance(event, SubscriptionValidation)
    expected = json.loads((path / "SubscriptionValidationResponse.json").read_text())
    assert {"validationResponse": event.code} == expected


def _key_event(event_type: str, **data: object) -> dict[str, object]:
    return {
        "id": "e-1",
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-prod",
        "subject": "sb-cmk",
        "eventType": event_type,
        "eventTime": "2026-11-22T00:00:00Z",
        "data": {
            "Id": "https://kv-prod.vault.azure.net/keys/sb-cmk/0123456789abcdef0123456789abcdef",
            "VaultName": "kv-prod",
            "ObjectType": "Key",
            "ObjectName": "sb-cmk",
            "Version": "0123456789abcdef0123456789abcdef",
            **data,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }


@pytest.mark.parametrize("kind", list(KeyVaultEventType))
def test_each_key_vault_event_type_we_act_on_is_typed(kind):
    """KeyNearExpiry, KeyExpired, KeyNewVersionCreated and VaultAccessPolicyChanged get their kind."""
    (event,) = parse_delivery(json.dumps([_key_event(kind.value, EXP=1767225600)]))
    assert isinstance(event, KeyVaultEvent)
    assert event.kind is kind
    assert event.vault_uri == "https://kv-prod.vault.azure.net"
    assert event.exp == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.pop("id"), "event has no id"),
        (lambda e: e.pop("eventType"), "event has no type"),
        (lambda e: e.update(eventTime="yesterday"), "is not an ISO 8601 time"),
        (lambda e: e.update(data="oops"), "event data is not a JSON object"),
        (lambda e: e["data"].update(EXP="soon"), "data.EXP 'soon' is not a Unix time"),
        (lambda e: e.update(data={}), "names no vault"),
    ],
)
def test_a_bad_event_is_rejected_with_a_reason_and_the_rest_still_parse(mutate, reason):
    """One bad entry in a batch is rejected; the good one beside it parses."""
    bad = _key_event("Microsoft.KeyVault.KeyExpired")
    mutate(bad)
    rejected, good = parse_delivery(json.dumps([bad, _key_event("Microsoft.KeyVault.KeyExpired")]))
    assert isinstance(rejected, RejectedEvent) and reason in rejected.reason
    assert isinstance(good, KeyVaultEvent)


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"{not json", "body is not JSON"), (b"[]", "empty list"), (b"\xff\xfe", "body is not JSON")],
)
def test_an_unreadable_delivery_is_refused_as_a_whole(body, problem):
    """A body that is not JSON events raises EventBodyError with the reason."""
    with pytest.raises(EventBodyError, match=problem):
        parse_delivery(body)


def test_a_batch_larger_than_event_grid_sends_is_refused():
    """More than 5,000 events in one delivery is not Event Grid."""
    with pytest.raises(EventBodyError, match="at most 5000"):
        parse_delivery(json.dumps([_key_event("Microsoft.KeyVault.KeyExpired")] * 5001))


def test_non_object_entries_are_rejected():
    """A number in a batch is rejected, not a crash."""
    (rejected,) = parse_delivery("[42]")
    assert isinstance(rejected, RejectedEvent) and "not a JSON object" in rejected.reason
