"""Event parsing under generated input: Microsoft's published quirks keep their meaning, and hostile entries,
batches and bodies are rejected with a reason, never an exception.

Per schema, each example is a delivery of one to four events: well-formed ones rendered with the quirks the
published samples show (PascalCase, camelCase or other casing, stray spaces in keys and values, NBF/EXP as
strings or numbers, seven fractional digits, offsets), the published samples themselves, and either of those
with fields deleted or replaced by hostile JSON values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from monitor.domain.errors import EventBodyError
from monitor.formats.events import (
    MAX_EVENTS_PER_BATCH,
    KeyVaultEvent,
    KeyVaultEventType,
    RejectedEvent,
    Schema,
    SubscriptionValidation,
    parse_delivery,
    parse_event,
)
from tests.hardening.fuzzing import EXTENDED, examples, json_values, record, unencodable
from tests.hardening.support import minimal_key_event

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PUBLISHED = {
    Schema.EVENT_GRID: [
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/event-grid-schema/secret_new_version_created.json",
        "microsoftdocs-azure-docs/event-schema-key-vault_05b33dd/eventgrid-schema_SecretNewVersionCreated.json",
        "microsoftdocs-azure-docs/event-schema-key-vault_38285e0/eventgrid-schema_SecretNewVersionCreated.json",
    ],
    Schema.CLOUD_EVENTS: [
        "azure-rest-api-specs/eventgrid-keyvault-2018-01-01/cloud-events-schema/secret_new_version_created.json",
        "microsoftdocs-azure-docs/event-schema-key-vault_05b33dd/cloudevents-schema_SecretNewVersionCreated.json",
    ],
}


def _published(path: str) -> dict[str, Any]:
    """One published sample as it is, quirks included (the docs' files are an array of one event)."""
    document = json.loads((FIXTURES / path).read_text(encoding="utf-8"))
    event: dict[str, Any] = document[0] if isinstance(document, list) else document
    return event


SAMPLES = {schema: [_published(path) for path in paths] for schema, paths in PUBLISHED.items()}
KEY_TYPES = [kind.value for kind in KeyVaultEventType]
OTHER_TYPES = [
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.CertificateNearExpiry",
    "Microsoft.KeyVault.KeyNearExpiry.v2",
    "Microsoft.Storage.BlobCreated",
]
ENVELOPE = {"id", "topic", "source", "subject", "eventtype", "type", "eventtime", "time", "data", "specversion"}
EVENTS_PER_SCHEMA = 10_000  # the extended mode's floor, per schema (the acceptance criterion)


# --- what an event means, and the many ways the published samples spell it -------------------------------


@dataclass(frozen=True)
class Meaning:
    """The facts a well-formed event carries; parsing any spelling of it must give these back."""

    schema: Schema
    id: str
    event_type: str
    time: datetime
    vault: str
    key: str
    version: str | None
    nbf: int | None
    exp: int | None
    with_object_id: bool


def _casing(style: str, name: str) -> str:
    if style == "pascal":
        return name[0].upper() + name[1:]
    if style == "camel":
        return name[0].lower() + name[1:]
    return name.upper() if style == "upper" else name.lower()


@st.composite
def meanings(draw: st.DrawFn, schema: Schema) -> Meaning:
    return Meaning(
        schema=schema,
        id=draw(st.uuids().map(str) | st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)),
        event_type=draw(st.sampled_from(KEY_TYPES + OTHER_TYPES)),
        time=draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC))),
        # Key Vault's grammar (monitor/domain/names.py): anything else is rejected, which test_event_input shows.
        vault=draw(st.from_regex(r"[a-z](?!.*--)[a-z0-9-]{1,22}[a-z0-9]", fullmatch=True)),
        key=draw(st.from_regex(r"[A-Za-z0-9-]{1,40}", fullmatch=True)),
        version=draw(st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True)),
        nbf=draw(st.none() | st.integers(0, 4_102_444_800)),
        exp=draw(st.none() | st.integers(0, 4_102_444_800)),
        with_object_id=draw(st.booleans()),
    )


@st.composite
def spellings(draw: st.DrawFn, meaning: Meaning) -> dict[str, Any]:
    """`meaning` as a JSON object, spelled as some published sample (or a plausible sibling) would spell it."""
    style = draw(st.sampled_from(["pascal", "camel", "lower", "upper"]))
    pad = st.sampled_from(["", "", " ", "  ", "\t"])

    def key(name: str) -> str:
        return draw(pad) + _casing(style, name) + draw(pad)

    def text(value: str) -> str:
        return draw(pad) + value + draw(pad)

    def unix(seconds: int) -> object:
        return draw(st.sampled_from([str(seconds), seconds, float(seconds), f" {seconds} ", f"{seconds}.0"]))

    t = meaning.time
    offset = draw(st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30)]))
    local = t.astimezone(timezone(offset))
    zone = local.strftime("%z")
    written = draw(
        st.sampled_from(
            [
                local.isoformat(),
                local.isoformat().replace("+00:00", "Z"),
                # Event Grid's seven fractional digits (one more than Python reads)
                local.strftime("%Y-%m-%dT%H:%M:%S.%f") + "7" + zone[:3] + ":" + zone[3:],
            ]
        )
    )
    data: dict[str, Any] = {key("VaultName"): text(meaning.vault), key("ObjectType"): text("Key")}
    if meaning.with_object_id:
        data[key("Id")] = text(f"https://{meaning.vault}.vault.azure.net/keys/{meaning.key}/{meaning.version or ''}")
    data[key("ObjectName")] = text(meaning.key)
    if meaning.version is not None:
        data[key("Version")] = text(meaning.version)
    if meaning.nbf is not None:
        data[key("NBF")] = unix(meaning.nbf)
    if meaning.exp is not None:
        data[key("EXP")] = unix(meaning.exp)
    topic = f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{meaning.vault}"
    event: dict[str, Any]
    if meaning.schema is Schema.CLOUD_EVENTS:
        event = {"specversion": "1.0", "id": text(meaning.id), "source": topic, "type": text(meaning.event_type)}
        event.update({"time": written, "subject": meaning.key, "data": data})
    else:
        event = {"id": text(meaning.id), "topic": topic, "eventType": text(meaning.event_type), "eventTime": written}
        event.update({"subject": meaning.key, "data": data, "dataVersion": "1", "metadataVersion": "1"})
    if draw(st.booleans()):  # a field neither schema knows (parsing ignores case and blanks around names)
        extra = draw(st.text(min_size=1, max_size=10).filter(lambda name: name.strip().lower() not in ENVELOPE))
        event[extra] = draw(json_values)
    return event


def _means(event: object, meaning: Meaning) -> None:
    """`event` is the parse of a spelling of `meaning`: every fact comes back, whatever the spelling."""
    assert isinstance(event, KeyVaultEvent), event
    assert event.schema is meaning.schema
    assert event.id == meaning.id
    assert event.event_type == meaning.event_type
    assert event.kind == next((k for k in KeyVaultEventType if k.value == meaning.event_type), None)
    assert abs(event.time - meaning.time) < timedelta(microseconds=1)
    assert event.vault_uri == f"https://{meaning.vault}.vault.azure.net"
    assert event.object_name == meaning.key
    assert event.version == meaning.version
    assert event.nbf == (None if meaning.nbf is None else datetime.fromtimestamp(meaning.nbf, tz=UTC))
    assert event.exp == (None if meaning.exp is None else datetime.fromtimestamp(meaning.exp, tz=UTC))


# --- hostile edits ----------------------------------------------------------------------------------------


@st.composite
def hostile_edits(draw: st.DrawFn, event: dict[str, Any]) -> object:
    """`event` with one to three fields deleted or replaced by hostile values, or not an object at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # an entry that is not an event
    edited: dict[str, Any] = json.loads(json.dumps(event))
    for _ in range(draw(st.integers(1, 3))):
        target = edited
        if isinstance(edited.get("data"), dict) and draw(st.booleans()):
            target = edited["data"]
        if not target:
            break
        name = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[name]
        else:
            target[name] = draw(json_values)
    return edited


@st.composite
def cases(draw: st.DrawFn, schema: Schema) -> tuple[object, Meaning | None]:
    """One entry of a delivery, and what it means when it was left well formed."""
    if draw(st.integers(0, 4)) == 0:
        sample = dict(draw(st.sampled_from(SAMPLES[schema])))
        if draw(st.booleans()):  # the published sample as a key event: the same data, a type we act on
            sample["type" if schema is Schema.CLOUD_EVENTS else "eventType"] = draw(st.sampled_from(KEY_TYPES))
        entry: dict[str, Any] = sample
        meaning = None
    else:
        meaning = draw(meanings(schema))
        entry = draw(spellings(meaning))
    if draw(st.integers(0, 2)) == 0:
        return draw(hostile_edits(entry)), None
    return entry, meaning


# --- the properties -------------------------------------------------------------------------------------------


def _well_formed(parsed: object, index: int) -> str:
    """Every parse result is one of three kinds, internally consistent, and fit for a log line and a store."""
    if isinstance(parsed, RejectedEvent):
        assert parsed.index == index and parsed.reason and isinstance(parsed.reason, str)
        assert len(parsed.reason) < 1000, "a rejection reason never repeats a whole oversized value"
        assert not unencodable([parsed.reason, parsed.id])
        return "rejected"
    if isinstance(parsed, SubscriptionValidation):
        assert parsed.id and parsed.code
        assert not unencodable([parsed.id, parsed.code, parsed.url])
        return "validation"
    assert isinstance(parsed, KeyVaultEvent), parsed
    assert parsed.id and parsed.id == parsed.id.strip()
    assert parsed.time.tzinfo is not None and parsed.time.utcoffset() == timedelta(0)
    for instant in (parsed.nbf, parsed.exp):
        assert instant is None or instant.tzinfo is not None
    if parsed.kind is not None:
        assert parsed.vault_uri is not None and parsed.vault_uri.startswith("https://")
    texts = [parsed.id, parsed.event_type, parsed.topic, parsed.subject, parsed.vault_uri]
    texts += [parsed.object_type, parsed.object_name, parsed.version]
    assert not unencodable(texts), "an accepted event's text must go to the log and the store as UTF-8"
    return "accepted"


def _fuzz_schema(schema: Schema) -> None:
    figures = record(f"events.{schema.value}")

    @examples(default=150, extended=6_000)
    @given(st.lists(cases(schema), min_size=1, max_size=4))
    def run(entries: list[tuple[object, Meaning | None]]) -> None:
        figures["deliveries"] += 1
        figures["generated events"] += len(entries)
        body = json.dumps([entry for entry, _ in entries]).encode()
        try:
            parsed = parse_delivery(body)
        except Exception as error:  # counted, then re-raised: hypothesis shrinks it and the test fails
            figures["unhandled exceptions"] += 1
            raise AssertionError(f"parse_delivery raised {type(error).__name__}: {error}") from error
        assert len(parsed) == len(entries)
        for index, ((entry, meaning), result) in enumerate(zip(entries, parsed, strict=True)):
            figures[_well_formed(result, index)] += 1
            if meaning is not None:
                figures["published quirks kept their meaning"] += 1
                _means(result, meaning)
            # An entry means the same alone as in a batch: its neighbours never change it.
            assert parse_event(entry, index) == result

    run()
    if EXTENDED:
        assert figures["generated events"] >= EVENTS_PER_SCHEMA
    assert figures["unhandled exceptions"] == 0


def test_event_grid_schema_events_parse_or_are_rejected_never_raise():
    """Event Grid schema: quirky spellings keep their meaning; hostile entries become RejectedEvents."""
    _fuzz_schema(Schema.EVENT_GRID)


def test_cloudevents_schema_events_parse_or_are_rejected_never_raise():
    """CloudEvents schema: quirky spellings keep their meaning; hostile entries become RejectedEvents."""
    _fuzz_schema(Schema.CLOUD_EVENTS)


# --- whole bodies ---------------------------------------------------------------------------------------------------


def _corruptions() -> st.SearchStrategy[bytes]:
    good = json.dumps([minimal_key_event(), SAMPLES[Schema.CLOUD_EVENTS][0]]).encode()
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(good)).map(lambda n: good[:n]),  # truncated
        st.tuples(st.integers(0, len(good)), st.binary(min_size=1, max_size=4)).map(
            lambda cut: good[: cut[0]] + cut[1] + good[cut[0] :]  # bytes slipped in
        ),
        st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth),  # nested past any parser's stack
        st.integers(4_000, 20_000).map(lambda digits: b"[" + b"7" * digits + b"]"),  # ints past Python's limit
        st.sampled_from([b"", b"null", b"{}", b"[]", b"\xef\xbb\xbf[]", "[{}]".encode("utf-16"), b"NaN", b'"x"']),
        json_values.map(lambda value: json.dumps(value).encode()),
    )


@examples(default=300, extended=5_000)
@given(_corruptions())
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b"[" + b"1" * 5000 + b"]")
def test_a_body_is_parsed_or_refused_as_a_whole_with_a_reason(body: bytes):
    """Random bytes, truncation, slipped-in bytes, deep nesting and huge numbers: EventBodyError or entries."""
    figures = record("events.bodies", generated=1)
    try:
        parsed = parse_delivery(body)
    except EventBodyError as error:
        figures["refused (400)"] += 1
        assert str(error) and len(str(error)) < 1000
        return
    except Exception as error:
        figures["unhandled exceptions"] += 1
        raise AssertionError(f"parse_delivery raised {type(error).__name__}: {error}") from error
    figures["parsed"] += 1
    assert 1 <= len(parsed) <= MAX_EVENTS_PER_BATCH
    for index, entry in enumerate(parsed):
        _well_formed(entry, index)


def test_a_batch_of_the_most_event_grid_sends_parses_entry_by_entry():
    """5,000 entries (the Event Grid maximum), good and bad interleaved: each judged alone, in order."""
    batch = [
        minimal_key_event(id=f"e-{i}") if i % 2 else minimal_key_event(id=f"e-{i}", eventTime="soon")
        for i in range(5000)
    ]
    parsed = parse_delivery(json.dumps(batch))
    assert [isinstance(p, KeyVaultEvent) for p in parsed] == [bool(i % 2) for i in range(5000)]
    assert all(p.index == i for i, p in enumerate(parsed) if isinstance(p, RejectedEvent))
