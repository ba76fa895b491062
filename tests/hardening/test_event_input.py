"""Event entries that once were misread or raised: each is now read right, or rejected with a clear reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from monitor.adapters.state_sqlite import SqliteStateStore
from monitor.domain.errors import EventBodyError
from monitor.formats.events import KeyVaultEvent, RejectedEvent, parse_delivery
from tests.hardening.support import minimal_key_event


def test_a_time_with_a_fraction_and_an_offset_keeps_its_offset():
    """02:00:00.5+02:00 is midnight UTC: the offset's digits are not read as more fractional digits."""
    for written in ("2026-11-22T02:00:00.5+02:00", "2026-11-22T02:00:00.1234567+02:00", "2026-11-21T19:00:00.5-05:00"):
        (event,) = parse_delivery(json.dumps([minimal_key_event(eventTime=written)]))
        assert isinstance(event, KeyVaultEvent)
        assert event.time.replace(microsecond=0) == datetime(2026, 11, 22, tzinfo=UTC), written


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" + b"1" * 5000 + b"]", "body is not JSON: Exceeds the limit (4300 digits)"),
    ],
    ids=["nested-100000-deep", "integer-of-5000-digits"],
)
def test_a_body_the_decoder_cannot_take_is_refused_as_a_whole(body: bytes, problem: str):
    """Deep nesting (RecursionError) and huge integers (ValueError) are EventBodyError: 400, not a crash."""
    with pytest.raises(EventBodyError) as refused:
        parse_delivery(body)
    assert problem in str(refused.value) and len(str(refused.value)) < 300


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda e: e.update(eventTime="0001-01-01T00:00:00+01:00"), "is not an ISO 8601 time"),
        (lambda e: e.update(eventTime="9999-12-31T23:59:59-01:00"), "is not an ISO 8601 time"),
        (lambda e: e["data"].update(Id="https://[::1/keys/sb-cmk", VaultName=None), "names no vault"),
        (lambda e: e["data"].update(Id="sb-cmk", VaultName=None), "names no vault"),
    ],
    ids=["year-1-with-offset", "year-9999-with-offset", "unclosed-ipv6-id", "id-that-is-no-url"],
)
def test_an_entry_with_an_impossible_time_or_vault_is_rejected(edit: Callable[[dict[str, Any]], None], reason: str):
    """Times an offset moves out of range (OverflowError) and ids that are no URL (ValueError) are rejected."""
    event = minimal_key_event()
    edit(event)
    (parsed,) = parse_delivery(json.dumps([event]))
    assert isinstance(parsed, RejectedEvent), parsed
    assert reason in parsed.reason


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda e: e.update(id="e-\ud800"), "event id is not valid Unicode text"),
        (lambda e: e.update(eventType="Microsoft.KeyVault.KeyExpired\udfff"), "event type is not valid Unicode text"),
        (lambda e: e["data"].update(ObjectName="sb-\udfff"), "event object_name is not valid Unicode text"),
        (lambda e: e.update(subject="\ud83d"), "event subject is not valid Unicode text"),
    ],
    ids=["id", "type", "object-name", "subject"],
)
def test_an_entry_with_a_lone_surrogate_is_rejected(edit: Callable[[dict[str, Any]], None], reason: str):
    """JSON's \\ud800 escapes decode to text no store or UTF-8 log can write: rejected, not accepted to fail later."""
    event = minimal_key_event()
    edit(event)
    (parsed,) = parse_delivery(json.dumps([event]))  # json.dumps writes the surrogate as an escape, as a sender would
    assert isinstance(parsed, RejectedEvent), parsed
    assert reason in parsed.reason
    assert parsed.reason.encode("utf-8") and (parsed.id is None or parsed.id.encode("utf-8"))


def test_a_lone_surrogate_is_what_the_state_store_cannot_write(tmp_path):
    """Why the rejection matters: the SQLite store fails on such an id, so the event could never be handled."""

    async def mark() -> None:
        store = SqliteStateStore(tmp_path / "state.sqlite")
        try:
            await store.mark_event_processed("e-\ud800", at=datetime(2026, 11, 22, tzinfo=UTC))
        finally:
            await store.close()

    with pytest.raises(UnicodeEncodeError):
        asyncio.run(mark())


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.update(eventTime="x" * 100_000),
        lambda e: e["data"].update(EXP="9" * 3000 + "x"),
        lambda e: e.update(eventTime={"nested": ["y" * 50_000]}),
    ],
    ids=["time", "exp", "time-object"],
)
def test_a_rejection_reason_quotes_a_huge_value_only_in_part(edit: Callable[[dict[str, Any]], None]):
    """Each rejection is logged: a reason repeats at most a clipped part of a hostile value."""
    event = minimal_key_event()
    edit(event)
    (parsed,) = parse_delivery(json.dumps([event]))
    assert isinstance(parsed, RejectedEvent), parsed
    assert len(parsed.reason) < 400, len(parsed.reason)


@pytest.mark.parametrize(
    "written", ["h+ttps://kv-prod.vault.azure.net/keys/sb-cmk/abc", "ftp://kv-prod.vault.azure.net/k"]
)
def test_a_data_id_that_is_not_an_https_url_does_not_name_the_vault(written: str):
    """Only an https data.Id names the vault; otherwise VaultName does, or the entry is rejected."""
    event = minimal_key_event()
    event["data"]["Id"] = written
    (named,) = parse_delivery(json.dumps([event]))
    assert isinstance(named, KeyVaultEvent) and named.vault_uri == "https://kv-prod.vault.azure.net"
    event["data"]["VaultName"] = None
    (nameless,) = parse_delivery(json.dumps([event]))
    assert isinstance(nameless, RejectedEvent) and "names no vault" in nameless.reason
