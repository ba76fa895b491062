"""`serve`'s webhook under bad input, over real HTTP: each bad delivery or entry gets the right status, a log
line and a count; nothing crashes; good events in the same batch are still handled.

Already shown elsewhere: 400 for a body that is not JSON or an empty list, 413 over 1 MiB with a length,
415 for text/plain (tests/entry/test_serve.py::test_bad_bodies_are_400_413_and_415), 401 without the secret
(tests/entry/test_serve.py::test_the_secret_is_required_when_set), a rejected entry beside a good one
(tests/entry/test_serve.py::test_a_cloudevents_batch_with_a_new_version_re_evaluates_and_counts_rejects).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.domain.model import DeleteKey, SetAccess
from monitor.entry.webhook import MAX_BODY
from monitor.formats.events import MAX_EVENTS_PER_BATCH
from monitor.sandbox import Sandbox
from tests.builders import SYSTEM_PRINCIPAL, key_event
from tests.hardening.fuzzing import examples, json_values, record
from tests.hardening.support import FAST_AZURE, OTHER, VAULT, ServeThread, fleet_document, parsed

KEY_EXPIRED = "Microsoft.KeyVault.KeyExpired"
NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
ACCESS_CHANGED = "Microsoft.KeyVault.VaultAccessPolicyChanged"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeThread]:
    """One `serve` (and stand-in) for the module: the webhook must survive everything the tests send it."""
    state = tmp_path_factory.mktemp("webhook") / "state.sqlite"
    with Sandbox(parsed(fleet_document())) as sandbox:
        environment = {
            **sandbox.environment(),
            **FAST_AZURE,
            "KEYHEALTH_SQLITE_PATH": str(state),
            # Input handling, not coalescing (tests/hardening/test_event_flood.py): each event's own outcome.
            "KEYHEALTH_EVENT_COALESCE_SECONDS": "0",
        }
        with ServeThread(sandbox, environment) as running:
            yield running


def _post(serve: ServeThread, body: bytes, content_type: str | None = "application/json") -> tuple[int, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return serve.request("POST", "/api/events", body, headers)


def _over_a_mebibyte() -> Iterator[bytes]:
    """A body sent in chunks, without a Content-Length: the limit must hold while reading."""
    yield b"["
    for _ in range(MAX_BODY // 65536 + 2):
        yield b" " * 65536
    yield b"]"


REFUSED = [
    # (what, body, content type, status)
    ("not-json", b"{not json", "application/json", 400),
    ("nested-100000-deep", b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    ("integer-of-5000-digits", b"[" + b"1" * 5000 + b"]", "application/json", 400),
    ("empty-batch", b"[]", "application/json", 400),
    ("one-more-than-event-grid-sends", json.dumps([{}] * (MAX_EVENTS_PER_BATCH + 1)).encode(), "application/json", 400),
    ("over-1-MiB-with-a-length", b"[" + b" " * MAX_BODY + b"]", "application/json", 413),
    ("over-1-MiB-chunked", None, "application/json", 413),
    ("text-plain", b"[]", "text/plain", 415),
    ("xml", b"<events/>", "application/xml", 415),
    ("form", b"a=b", "application/x-www-form-urlencoded", 415),
    ("no-content-type", b"[]", None, 415),
]


@pytest.mark.parametrize(("what", "body", "content_type", "status"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_bad_delivery_is_refused_with_its_status_a_log_line_and_a_count(
    serve: ServeThread, caplog: pytest.LogCaptureFixture, what: str, body: bytes | None, content_type: str, status: int
):
    """Each bad delivery: the right 4xx with a JSON reason, a warning logged, counted in /healthz; serve lives on."""
    _, before = serve.request("GET", "/healthz")
    with caplog.at_level(logging.INFO, logger="keyhealth"):
        answered, reply = _post(serve, _over_a_mebibyte() if body is None else body, content_type)  # type: ignore[arg-type]
    record("webhook.refused deliveries", **{str(status): 1})
    assert answered == status, (what, reply)
    assert isinstance(reply, dict) and reply["error"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert warnings, f"no warning logged for {what}"
    _, after = serve.request("GET", "/healthz")
    assert after["refused"].get(str(status), 0) == before.get("refused", {}).get(str(status), 0) + 1
    assert serve.request("GET", "/status")[0] == 200


def test_json_with_parameters_in_its_content_type_is_taken(serve: ServeThread):
    """application/json; charset=utf-8 and the CloudEvents types are event deliveries."""
    event = key_event(KEY_EXPIRED, "https://kv-elsewhere.vault.azure.net", "k", event_id="ct-1")
    for content_type in ("application/json; charset=utf-8", "application/cloudevents-batch+json"):
        status, reply = _post(serve, json.dumps([event]).encode(), content_type)
        assert status == 200 and reply["outcomes"] == {"ignored": 1}, reply  # a vault the fleet does not use


def test_a_batch_of_5000_mostly_bad_entries_still_handles_the_good_ones(
    serve: ServeThread, caplog: pytest.LogCaptureFixture
):
    """The most Event Grid sends in one delivery (under 1 MiB): 4,990 bad entries, each rejected, logged and
    counted; 5 unrelated; 5 good ones re-read and re-judged, their namespaces' state updated."""
    at = serve.sandbox.clock.now()
    serve.sandbox.apply(DeleteKey(at=at, vault=VAULT, key="k1"))
    serve.sandbox.apply(SetAccess(at=at, vault=OTHER, principal=SYSTEM_PRINCIPAL, permissions=frozenset()))
    bad_kinds: list[dict[str, Any]] = [
        {"eventType": KEY_EXPIRED, "eventTime": "soon"},  # no time
        {"eventTime": "2026-11-22T00:00:00Z"},  # no type
        {"eventType": KEY_EXPIRED, "eventTime": "2026-11-22T00:00:00Z", "data": "oops"},  # data not an object
        {"eventType": KEY_EXPIRED, "eventTime": "2026-11-22T00:00:00Z", "data": {}},  # names no vault
        {"eventType": KEY_EXPIRED, "eventTime": "0001-01-01T00:00:00+01:00", "data": {"VaultName": "kv-test"}},
    ]
    batch: list[Any] = [{"id": f"bad-{i}", **bad_kinds[i % len(bad_kinds)]} for i in range(4990)]
    batch += [key_event("Microsoft.KeyVault.SecretNewVersionCreated", VAULT, "s", f"unrelated-{i}") for i in range(5)]
    good = [
        key_event(NEW_VERSION, VAULT, "k1", "good-1"),
        key_event(KEY_EXPIRED, VAULT, "k-soon", "good-2"),
        key_event(NEW_VERSION, VAULT, "k2", "good-3"),
        key_event(ACCESS_CHANGED, OTHER, None, "good-4"),
        key_event(NEW_VERSION, VAULT, "k-gone", "good-5"),
    ]
    for index, event in enumerate(good):
        batch.insert(index * 997, event)  # spread through the batch
    body = json.dumps(batch, separators=(",", ":")).encode()
    assert len(batch) == MAX_EVENTS_PER_BATCH and len(body) <= MAX_BODY
    with caplog.at_level(logging.INFO, logger="keyhealth"):
        status, reply = _post(serve, body)
    assert status == 200, reply
    assert reply["received"] == 5000
    assert reply["outcomes"] == {"rejected": 4990, "unrelated": 5, "evaluated": 5}, reply["outcomes"]
    assert len(reply["rejected"]) == 4990 and reply["failed"] == []
    rejected_lines = [r for r in caplog.records if "rejected event" in r.getMessage()]
    assert len(rejected_lines) == 10  # one by one up to 10, then one line for them all
    assert any("rejected 4990 entries of this delivery in all" in r.getMessage() for r in caplog.records)
    statuses = {n["name"]: n["status_now"] for n in serve.request("GET", "/status")[1]["namespaces"]}
    assert statuses["sb-one"] == "revoked"  # k1 deleted, seen through good-1
    assert statuses["sb-two"] == "degraded"  # k3 no longer usable by the identity, seen through good-4
    record("webhook.batch of 5000", entries=5000, rejected=4990, unrelated=5, evaluated=5)


# --- generated deliveries ------------------------------------------------------------------------------------------


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "",
    ]
)


@st.composite
def deliveries(draw: st.DrawFn) -> bytes:
    """Mostly JSON batches of hostile entries and events for keys nobody lists, sometimes raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    entries: list[Any] = []
    for index in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            entries.append(draw(json_values))
        else:
            event = key_event(
                draw(st.sampled_from([KEY_EXPIRED, NEW_VERSION, "Microsoft.KeyVault.SecretNearExpiry", ""])),
                "https://kv-nobody.vault.azure.net",
                draw(st.sampled_from(["k", "", "\ud800"])),
                event_id=draw(st.sampled_from([f"g-{index}", "", "\udfff", " "])),
            )
            if choice == 1:
                event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
            entries.append(event)
    return json.dumps(entries if draw(st.booleans()) or not entries else entries[0]).encode()


@examples(default=150, extended=2_000)
@given(deliveries(), CONTENT_TYPES)
def test_generated_deliveries_get_a_4xx_or_a_consistent_summary_never_a_500(
    serve: ServeThread, body: bytes, content_type: str
):
    """Whatever arrives: 200 with a summary that adds up, or 400/413/415 with a reason; the service lives on."""
    figures = record("webhook.generated deliveries", deliveries=1)
    status, reply = _post(serve, body, content_type or None)
    figures[f"status {status}"] += 1
    assert status in {200, 400, 413, 415}, (status, reply)
    assert isinstance(reply, dict)
    if status != 200:
        assert reply["error"]
        return
    if "validationResponse" in reply:
        return
    outcomes = reply["outcomes"]
    figures["entries"] += reply["received"]
    figures["entries rejected"] += outcomes.get("rejected", 0)
    assert sum(outcomes.values()) == reply["received"]
    assert len(reply["rejected"]) == outcomes.get("rejected", 0)
    assert reply["failed"] == [] and "failed" not in outcomes


def test_an_event_for_a_watched_key_with_a_lone_surrogate_is_rejected_not_failed(serve: ServeThread):
    """Accepted, its id could not be stored: a 500 on every redelivery, retried by Event Grid for a day."""
    event = key_event(NEW_VERSION, VAULT, "k2", event_id="e-\ud800")
    status, reply = _post(serve, json.dumps([event]).encode())
    assert status == 200 and reply["outcomes"] == {"rejected": 1}, reply
    assert "not valid Unicode" in reply["rejected"][0]["reason"]
