"""Key Vault Event Grid events, in the Event Grid or the CloudEvents schema, as typed values.

Parsing is forgiving where Microsoft's own published samples differ (PascalCase or camelCase data
keys, stray spaces in keys and values, NBF/EXP as strings or numbers) and strict where it matters:
an event without an id, a type or a usable time is rejected with a reason, never guessed.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from monitor.domain.errors import EventBodyError, encodable
from monitor.domain.names import ascii_fold, key_name_problem, vault_host_problem, version_problem

MAX_EVENTS_PER_BATCH = 5000  # Event Grid delivers at most 5,000 events (1 MB) per batch


class Schema(enum.Enum):
    EVENT_GRID = "eventgrid"
    CLOUD_EVENTS = "cloudevents"


class KeyVaultEventType(enum.Enum):
    """The Key Vault events that can change a namespace's key health."""

    KEY_NEAR_EXPIRY = "Microsoft.KeyVault.KeyNearExpiry"
    KEY_EXPIRED = "Microsoft.KeyVault.KeyExpired"
    KEY_NEW_VERSION_CREATED = "Microsoft.KeyVault.KeyNewVersionCreated"
    VAULT_ACCESS_POLICY_CHANGED = "Microsoft.KeyVault.VaultAccessPolicyChanged"


VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


@dataclass(frozen=True, slots=True)
class KeyVaultEvent:
    """One Key Vault event. `kind` is None for types that cannot affect keys (secrets, certificates)."""

    id: str
    event_type: str
    kind: KeyVaultEventType | None
    schema: Schema
    time: datetime
    topic: str | None  # the vault's ARM resource id
    subject: str | None
    vault_uri: str | None
    object_type: str | None
    object_name: str | None
    version: str | None
    nbf: datetime | None
    exp: datetime | None


@dataclass(frozen=True, slots=True)
class SubscriptionValidation:
    """Event Grid's subscription handshake: answer `{"validationResponse": code}`."""

    id: str
    code: str
    url: str | None
    topic: str | None = None  # the topic being subscribed: only the monitor's own may be answered


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An entry of a delivery that is not a usable event, and why (logged and counted, never retried)."""

    index: int
    id: str | None
    reason: str


ParsedEvent = KeyVaultEvent | SubscriptionValidation | RejectedEvent


def parse_delivery(body: bytes | str | object) -> list[ParsedEvent]:
    """Parse one webhook delivery: a single event or a batch, in either schema.

    Raises EventBodyError when the body as a whole is unusable; a bad entry becomes a RejectedEvent.
    """
    document = body
    if isinstance(body, bytes | str):
        try:
            document = json.loads(body)
        except RecursionError:
            # Thousands of nested brackets exhaust the decoder's stack: hostile, never Event Grid.
            raise EventBodyError("body is not JSON events: nested too deeply") from None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, and integers past Python's digit limit
            raise EventBodyError(f"body is not JSON: {_clip(str(error))}") from None
    entries = document if isinstance(document, list) else [document]
    if not entries:
        raise EventBodyError("body is an empty list of events")
    if len(entries) > MAX_EVENTS_PER_BATCH:
        raise EventBodyError(f"{len(entries)} events in one delivery; Event Grid sends at most {MAX_EVENTS_PER_BATCH}")
    return [parse_event(entry, index) for index, entry in enumerate(entries)]


def parse_event(entry: object, index: int = 0) -> ParsedEvent:
    """One event (a decoded JSON object) in either schema; a bad one becomes a RejectedEvent."""
    if not isinstance(entry, Mapping):
        return RejectedEvent(index, None, f"entry {index} is not a JSON object")
    fields = _normalised(entry)
    event_id = _text(fields.get("id"))
    if "specversion" in fields:
        schema = Schema.CLOUD_EVENTS
        event_type, time_text, topic = _text(fields.get("type")), fields.get("time"), _text(fields.get("source"))
    else:
        schema = Schema.EVENT_GRID
        event_type, time_text, topic = (
            _text(fields.get("eventtype")),
            fields.get("eventtime"),
            _text(fields.get("topic")),
        )
    if not event_id:
        return RejectedEvent(index, None, "event has no id")
    if not encodable(event_id):
        return RejectedEvent(index, None, "event id is not valid Unicode text (it holds a lone surrogate)")
    if not event_type:
        return RejectedEvent(index, event_id, "event has no type")
    if not encodable(event_type):
        return RejectedEvent(index, event_id, "event type is not valid Unicode text (it holds a lone surrogate)")
    data = fields.get("data")
    if event_type == VALIDATION_EVENT:
        validation = _normalised(data) if isinstance(data, Mapping) else {}
        code = _text(validation.get("validationcode"))
        if not code or not encodable(code):
            return RejectedEvent(index, event_id, "subscription validation event has no usable validationCode")
        url = _text(validation.get("validationurl"))
        return SubscriptionValidation(
            event_id,
            code,
            url if url is None or encodable(url) else None,
            topic if topic and encodable(topic) else None,
        )
    time = _instant(time_text)
    if time is None:
        return RejectedEvent(index, event_id, f"event time {_shown(time_text)} is not an ISO 8601 time")
    if data is not None and not isinstance(data, Mapping):
        return RejectedEvent(index, event_id, "event data is not a JSON object")
    payload = _normalised(data) if isinstance(data, Mapping) else {}
    kind = next((k for k in KeyVaultEventType if ascii_fold(k.value) == ascii_fold(event_type)), None)
    object_id = _text(payload.get("id"))
    vault_name = _text(payload.get("vaultname"))
    vault_uri = _vault_uri(object_id, vault_name)
    if kind is not None and vault_uri is None:
        return RejectedEvent(
            index, event_id, f"{event_type} event names no vault (data.Id is no vault URL, data.VaultName is missing)"
        )
    object_name = _text(payload.get("objectname"))
    version = _text(payload.get("version"))
    nbf, exp = _unix(payload.get("nbf")), _unix(payload.get("exp"))
    for name in ("nbf", "exp"):
        if payload.get(name) not in (None, "") and _unix(payload.get(name)) is None:
            return RejectedEvent(index, event_id, f"data.{name.upper()} {_shown(payload.get(name))} is not a Unix time")
    texts = {
        "topic": topic,
        "subject": _text(fields.get("subject")),
        "vault_uri": vault_uri,
        "object_type": _text(payload.get("objecttype")),
        "object_name": object_name,
        "version": version,
    }
    # JSON may carry lone surrogates (\ud800), which neither the state store nor a UTF-8 log can write:
    # accepted, such an event would fail on every delivery and Event Grid would retry it for a day.
    broken = next((name for name, text in texts.items() if text is not None and not encodable(text)), None)
    if broken is not None:
        return RejectedEvent(index, event_id, f"event {broken} is not valid Unicode text (it holds a lone surrogate)")
    if kind is not None and vault_uri is not None:
        # Key Vault's grammar before anything is matched or sent: a look-alike name must not reach either.
        problem, object_name = _grammar_problem(kind, vault_uri, object_id, vault_name, object_name, version, topic)
        if problem is not None:
            return RejectedEvent(index, event_id, problem)
        texts["object_name"] = object_name
    return KeyVaultEvent(
        id=event_id, event_type=event_type, kind=kind, schema=schema, time=time, nbf=nbf, exp=exp, **texts
    )


_TOPIC = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/(?:vaults|managedHSMs)/([^/]+)/?",
    re.IGNORECASE | re.ASCII,  # ASCII: with Unicode case folding, U+212A would match the K of KeyVault
)


def _grammar_problem(
    kind: KeyVaultEventType,
    vault_uri: str,
    object_id: str | None,
    vault_name: str | None,
    object_name: str | None,
    version: str | None,
    topic: str | None,
) -> tuple[str | None, str | None]:
    """(Why the event's names are not Key Vault's, or None; the key name, from data.Id when ObjectName is
    missing). Checked: the vault host, VaultName, the topic's vault, the key name and version, in data.Id too."""
    host = vault_uri.removeprefix("https://")
    problem = vault_host_problem(host)
    if problem is not None:
        return f"data.Id: {problem}", object_name
    vault = ascii_fold(host.split(".", 1)[0])
    if vault_name is not None and ascii_fold(vault_name) != vault:
        return f"data.VaultName {_shown(vault_name)} is not the vault of data.Id ({vault})", object_name
    if topic is not None:
        match = _TOPIC.fullmatch(topic)
        if match is None:
            return f"the topic {_shown(topic)} is not a Key Vault resource id", object_name
        if ascii_fold(match.group(1)) != vault:
            return f"the topic's vault {_shown(match.group(1))} is not the vault the event names ({vault})", object_name
    if kind is KeyVaultEventType.VAULT_ACCESS_POLICY_CHANGED:
        return None, object_name  # about the vault: ObjectName is the vault's own name, not read
    path = urlsplit(object_id).path.strip("/").split("/") if object_id and object_id.startswith("https://") else []
    if len(path) >= 2 and ascii_fold(path[0]) == "keys":
        if object_name is None:
            object_name = path[1]
        elif ascii_fold(path[1]) != ascii_fold(object_name):
            return f"data.ObjectName {_shown(object_name)} is not the key data.Id names", object_name
        if len(path) >= 3 and (problem := version_problem(path[2])) is not None:
            return f"data.Id's version: {problem}", object_name
    if object_name is not None and (problem := key_name_problem(object_name)) is not None:
        return f"data.ObjectName: {problem}", object_name
    if version is not None and (problem := version_problem(version)) is not None:
        return f"data.Version: {problem}", object_name
    return None, object_name


def _normalised(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys case-folded and stripped: the published samples spell them `VaultName`, `vaultName`, `ObjectName `."""
    return {str(key).strip().lower(): value for key, value in mapping.items()}


def _clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters: a reason repeats a hostile value only in part."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: object) -> str:
    """A value as a reason quotes it: repr, clipped (a 1 MB field must not become a 1 MB log line)."""
    return _clip(repr(value), 80)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    # Event Grid writes seven fractional digits (2019-07-25T01:08:33.1036736Z); Python reads six.
    if "." in text:
        head, _, tail = text.partition(".")
        # Only the digits right after the point: an offset's digits (+02:00) are not part of the fraction.
        count = next((i for i, c in enumerate(tail) if not c.isdigit()), len(tail))
        digits, zone = tail[:count], tail[count:]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it past year 1 or 9999 in UTC
        return None


def _unix(value: object) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    if not 0 <= seconds < 253402300800:  # before year 10000
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _vault_uri(object_id: str | None, vault_name: str | None) -> str | None:
    if object_id:
        try:
            parts = urlsplit(object_id)
        except ValueError:  # such as an unclosed IPv6 bracket: not a URL, so it names no vault
            parts = None
        # Key Vault object ids are https URLs; any other scheme is not one, and the vault name decides.
        # The host as written (`hostname` would lower it the Unicode way, folding look-alikes into ASCII).
        if parts is not None and ascii_fold(parts.scheme) == "https" and parts.netloc:
            return f"https://{parts.netloc}"
    # Without an object id only the public cloud's naming can be assumed.
    return f"https://{vault_name}.vault.azure.net" if vault_name else None
