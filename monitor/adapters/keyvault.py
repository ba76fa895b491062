"""Keys and their versions from the Key Vault data plane (azure-keyvault-keys, aio) as domain Keys."""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from azure.core.exceptions import AzureError, DecodeError, HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import DeletedKey, KeyProperties, KeyVaultKey
from azure.keyvault.keys.aio import KeyClient
from opentelemetry.trace import SpanKind

from monitor.adapters.azure_clients import AzureClients, describe_failure, json_body
from monitor.app.telemetry import TRACER
from monitor.domain.errors import ReadError
from monitor.domain.model import Key, KeyVersion, key_url, name_id, vault_id
from monitor.domain.names import key_name_problem, vault_uri_host
from monitor.domain.usability import version_reasons

log = logging.getLogger("keyhealth.keyvault")

# A version whose creation time Key Vault did not report has existed for as long as we can tell.
_UNKNOWN_CREATION = datetime(1970, 1, 1, tzinfo=UTC)
# Key Vault's largest listing page: one request confirms up to this many keys unchanged.
LIST_PAGE_SIZE = 25
# However unchanged a key's listing looks, it is read in full again within this (staggered per key, so
# the full reads of a large fleet spread over polls instead of landing in one).
FULL_READ_EVERY = 3600.0
# `updated` has whole seconds: a key written this recently may be written again within the same second,
# unseen by the listing, so it is not confirmed from one.
SETTLING = timedelta(minutes=1)
# After the listing is refused (403: no keys/list permission), keys are read one by one for this long.
LIST_REFUSED_FOR = 3600.0

# What a listing shows of a key's current version; the same values mean the same version, unchanged.
Validator = tuple[datetime | None, datetime | None, bool | None, datetime | None, datetime | None]


def _text(value: object) -> str:
    """An SDK enum or string as its plain string value."""
    return str(getattr(value, "value", value))


def _from_properties(properties: KeyProperties, key_ops: Iterable[object] | None = None) -> KeyVersion:
    return KeyVersion(
        version=properties.version or "",
        created=properties.created_on or _UNKNOWN_CREATION,
        enabled=properties.enabled if properties.enabled is not None else True,
        nbf=properties.not_before,
        exp=properties.expires_on,
        key_ops=None if key_ops is None else tuple(_text(op) for op in key_ops),
    )


def _from_key(key: KeyVaultKey | DeletedKey) -> KeyVersion:
    version = _from_properties(key.properties, key.key_operations)
    modulus = getattr(key.key, "n", None)
    return KeyVersion(
        version=version.version,
        created=version.created,
        enabled=version.enabled,
        nbf=version.nbf,
        exp=version.exp,
        key_ops=version.key_ops,
        kty=_text(key.key_type) if key.key_type else None,
        key_size=len(modulus) * 8 if modulus else None,
    )


def _instant(value: object) -> datetime | None:
    return (
        datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )


def validator_of(document: Mapping[str, Any]) -> Validator:
    """A key's current attributes as a listing shows them, from a key bundle or a listed key item."""
    attributes = document.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        return (None, None, None, None, None)
    enabled = attributes.get("enabled")
    return (
        _instant(attributes.get("created")),
        _instant(attributes.get("updated")),
        enabled if isinstance(enabled, bool) else None,
        _instant(attributes.get("nbf")),
        _instant(attributes.get("exp")),
    )


async def _key_listing(client: KeyClient) -> AsyncGenerator[list[Mapping[str, Any]], None]:
    """GET /keys page by page, through the client's pipeline, each page's items read as JSON (KeyItem: kid,
    attributes, tags); the SDK's models would cost more than the rest of a page's handling.

    Raises AzureError, and DecodeError for a page that is not a listing or a nextLink to another host.
    """
    url: str | None = f"/keys?maxresults={LIST_PAGE_SIZE}"
    host = urlsplit(client.vault_url).netloc
    while url:
        # Named as the SDK's own method would be: a raw request gets only the transport's span.
        with TRACER.start_as_current_span("KeyClient.list_properties_of_keys", kind=SpanKind.INTERNAL):
            response = await client.send_request(HttpRequest("GET", url), stream=True)
            await response.read()
        response.raise_for_status()
        body = json_body(response, "key listing")
        items = body.get("value") if isinstance(body, Mapping) else None
        next_link = body.get("nextLink") if isinstance(body, Mapping) else None
        if not isinstance(items, list) or not isinstance(next_link, str | None):
            raise DecodeError("unreadable key listing: no value list", response=response)
        if next_link and urlsplit(next_link).netloc != host:
            raise DecodeError("key listing: nextLink leaves the vault", response=response)
        yield [item for item in items if isinstance(item, Mapping)]
        url = next_link


def _listed_name(item: Mapping[str, Any]) -> str:
    """A listed key's name, from its kid (https://{vault}/keys/{name})."""
    kid = item.get("kid")
    return kid.partition("/keys/")[2].partition("/")[0] if isinstance(kid, str) else ""


def version_from_bundle(bundle: Mapping[str, Any]) -> tuple[KeyVersion, str, dict[str, str]]:
    """A key bundle as Key Vault's REST API returns it (GET /keys/{name}): the version, the key's name, its tags.

    Raises ValueError when it is not one.
    """
    key = bundle.get("key")
    attributes = bundle.get("attributes") or {}
    if not isinstance(key, Mapping) or not isinstance(key.get("kid"), str) or not isinstance(attributes, Mapping):
        raise ValueError("not a key bundle: no key.kid")
    _, _, path = key["kid"].partition("/keys/")
    name, _, version = path.partition("/")
    ops = key.get("key_ops")
    modulus = key.get("n")
    size = None
    if isinstance(modulus, str) and modulus:
        size = len(base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))) * 8
    enabled = attributes.get("enabled")
    tags = bundle.get("tags") or {}
    return (
        KeyVersion(
            version=version,
            created=_instant(attributes.get("created")) or _UNKNOWN_CREATION,
            enabled=enabled if isinstance(enabled, bool) else True,
            nbf=_instant(attributes.get("nbf")),
            exp=_instant(attributes.get("exp")),
            key_ops=tuple(str(op) for op in ops) if isinstance(ops, list) else None,
            kty=str(key["kty"]) if key.get("kty") else None,
            key_size=size,
        ),
        name,
        {str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {},
    )


def _key_vault_not_found(error: HttpResponseError) -> bool:
    """Whether a 404 is Key Vault's own KeyNotFound (azure-core's reading of {"error": {"code": …}})."""
    return error.error is not None and error.error.code == "KeyNotFound"


async def _current_version(
    client: KeyClient, name: str
) -> tuple[Mapping[str, Any], KeyVersion, str, dict[str, str]] | None:
    """GET the key's current version through the client's own pipeline (auth, retries, pacing, telemetry), read
    as JSON: the SDK's model costs a quarter of each request's CPU, on the one call a poll makes per key.
    None when the key is not there (404). Raises AzureError."""
    # Named as the SDK's own method would be: a raw request gets only the transport's span. Streamed, and read
    # once here: the pipeline's content policy would decode the JSON too (a tenth of the request's CPU).
    with TRACER.start_as_current_span("KeyClient.get_key", kind=SpanKind.INTERNAL):
        response = await client.send_request(HttpRequest("GET", f"/keys/{quote(name, safe='')}/"), stream=True)
        await response.read()
    if response.status_code == 404:
        # Only Key Vault's own answer says the key is not there; a 404 from anything else (a proxy, a wrong
        # endpoint, a cut-off body) says nothing about the key.
        if _key_vault_not_found(HttpResponseError(response=response)):
            return None
        raise DecodeError("a 404 that is not Key Vault's KeyNotFound", response=response)
    response.raise_for_status()
    bundle = json_body(response, "key bundle")
    try:
        if not isinstance(bundle, Mapping):
            raise ValueError("not a JSON object")
        return (bundle, *version_from_bundle(bundle))
    except ValueError as error:  # truncated or foreign JSON: unread, never guessed
        raise DecodeError(f"unreadable key bundle: {error}", response=response) from None


@dataclasses.dataclass(frozen=True, slots=True)
class _FullRead:
    """A key as last read in full, and what its listing must show for that read to still hold."""

    key: Key
    current: KeyVersion
    validator: Validator
    due: float  # monotonic: from then on it is read in full again, whatever its listing shows


def _confirmable(entry: _FullRead, moment: float, now: datetime) -> bool:
    """Whether a listing may confirm this full read now: its current version was usable, and it is not due."""
    return moment < entry.due and not version_reasons(entry.current, now)


RECORD_FORMAT = 1  # of the records take_changed_records writes: a reader skips records of another format


def _epoch(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


def _from_epoch(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a time")
    return datetime.fromtimestamp(value, UTC)


def _record_of(entry: _FullRead, due_wall: float) -> list[Any]:
    version = entry.current
    return [
        entry.key.vault,
        entry.key.name,
        [
            version.version,
            _epoch(version.created),
            version.enabled,
            _epoch(version.nbf),
            _epoch(version.exp),
            None if version.key_ops is None else list(version.key_ops),
            version.kty,
            version.key_size,
        ],
        dict(entry.key.tags),
        [_epoch(t) if isinstance(t, datetime) else t for t in entry.validator],
        due_wall,
    ]


def _entry_of(record: object, wall_to_clock: float) -> _FullRead | None:
    """A record as _record_of wrote it, or None for anything else (a full read costs less than a wrong key)."""
    if not (isinstance(record, list) and len(record) == 6):
        return None
    vault, name, raw_version, tags, raw_validator, due_wall = record
    if not (isinstance(raw_version, list) and len(raw_version) == 8):
        return None
    if not (isinstance(raw_validator, list) and len(raw_validator) == 5):
        return None
    try:
        number, created, enabled, nbf, exp, key_ops, kty, key_size = raw_version
        texts = (vault, name, number)
        if not all(isinstance(text, str) for text in texts) or not isinstance(enabled, bool):
            return None
        if key_ops is not None and not (isinstance(key_ops, list) and all(isinstance(op, str) for op in key_ops)):
            return None
        if (kty is not None and not isinstance(kty, str)) or (key_size is not None and type(key_size) is not int):
            return None
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            return None
        created_at, updated_at, listed_enabled, listed_nbf, listed_exp = raw_validator
        if listed_enabled is not None and not isinstance(listed_enabled, bool):
            return None
        version = KeyVersion(
            version=number,
            created=_from_epoch(created) or _UNKNOWN_CREATION,
            enabled=enabled,
            nbf=_from_epoch(nbf),
            exp=_from_epoch(exp),
            key_ops=None if key_ops is None else tuple(key_ops),
            kty=kty,
            key_size=key_size,
        )
        validator: Validator = (
            _from_epoch(created_at),
            _from_epoch(updated_at),
            listed_enabled,
            _from_epoch(listed_nbf),
            _from_epoch(listed_exp),
        )
        if validator[1] is None or isinstance(due_wall, bool) or not isinstance(due_wall, int | float):
            return None
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    key = Key(vault=vault, name=name, versions=(version,), tags={str(k): v for k, v in tags.items()})
    return _FullRead(key, version, validator, float(due_wall) + wall_to_clock)


class KeyVaultKeys:
    """KeyReader: the current version and pinned versions in full; every version's attributes when the
    current one is unusable (to tell whether an older one would do).

    Only the current and pinned versions carry `key_ops` (listing versions does not return them);
    older versions are read from their attributes alone. Each read learns the vault's key type, which
    sizes its request limiter.

    Key Vault has no conditional GET, but its key listing returns each key's current attributes,
    `updated` included, 25 keys a request. A key whose last full read found its current version usable
    and whose listing still shows that version's attributes is confirmed from the listing (`revalidate`):
    any write to a key (new version, enable, expiry, operations, tags) changes `updated`.
    """

    def __init__(
        self,
        clients: AzureClients,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._wall = wall
        self._full_reads: dict[tuple[str, str], _FullRead] = {}
        self._changed_vaults: set[str] = set()  # whose full reads changed since take_changed_records
        self._list_refused_until: dict[str, float] = {}
        self._next_sweep = 0.0

    async def get_key(self, vault_uri: str, name: str, *, pinned_versions: Iterable[str] = ()) -> Key | None:
        """The key as Key Vault has it now; None when neither it nor a soft-deleted copy exists.

        Raises ReadError when the monitor could not read it (its own 401/403, timeout, 5xx, throttling).
        """
        what = key_url(vault_uri, name)
        # A name from an Azure answer is checked too: one Key Vault would refuse is never sent, and what it
        # names is not seen (unknown), not judged.
        problem = key_name_problem(name)
        if problem is None and vault_uri_host(vault_uri) is None:
            problem = f"{vault_uri.strip()!r} is not a Key Vault or Managed HSM URI (https://<vault>.vault.azure.net)"
        if problem is not None:
            raise ReadError(what, f"not sent to Key Vault: {problem}")
        client = self._clients.key_client(vault_uri)
        pinned_versions = tuple(pinned_versions)
        cache_key = (vault_id(vault_uri), name_id(name))
        if self._full_reads.pop(cache_key, None) is not None:
            self._changed_vaults.add(cache_key[0])
        try:
            current = await _current_version(client, name)
        except AzureError as error:
            raise ReadError(what, describe_failure(error)) from error
        if current is None:
            return await self._deleted(vault_uri, name)
        bundle, latest, current_name, tags = current
        self._clients.limiter.saw_key_type(vault_id(vault_uri), latest.kty)
        versions: dict[str, KeyVersion] = {name_id(latest.version): latest}
        now = datetime.now(UTC)
        unusable = bool(version_reasons(latest, now))
        try:
            if unusable:
                # Only then do older versions matter (would one of them do?): a request saved per healthy key.
                async for properties in client.list_properties_of_key_versions(name):
                    versions.setdefault(name_id(properties.version or ""), _from_properties(properties))
            for pinned in pinned_versions:
                if versions.get(name_id(pinned)) is None or versions[name_id(pinned)].key_ops is None:
                    try:
                        full = await client.get_key(name, pinned)
                    except ResourceNotFoundError as missing:
                        if not _key_vault_not_found(missing):
                            raise  # a 404 from anything but Key Vault (a proxy, a wrong endpoint): unread
                        continue  # the pinned version does not exist: a usability fact the domain reports
                    versions[name_id(pinned)] = _from_key(full)
        except AzureError as error:
            raise ReadError(what, describe_failure(error)) from error
        ordered = sorted(versions.values(), key=lambda v: (v.created, v.version))
        key = Key(vault=vault_uri, name=current_name or name, versions=tuple(ordered), tags=tags)
        validator = validator_of(bundle)
        updated = validator[1]
        if not unusable and not pinned_versions and updated is not None and now - updated >= SETTLING:
            # Staggered by name: keys first read together are not all due for a full read in the same poll.
            stagger = 0.75 + 0.25 * (zlib.crc32("/".join(cache_key).encode()) / 0xFFFFFFFF)
            self._full_reads[cache_key] = _FullRead(key, latest, validator, self._clock() + FULL_READ_EVERY * stagger)
            self._changed_vaults.add(cache_key[0])
        return key

    # -- full reads shared with other instances through the state store

    def take_changed_records(self) -> dict[str, dict[str, Any]]:
        """The full reads of each vault whose reads changed since the last call, by vault_id, as JSON-ready
        records another instance can `recall`; the vaults are then counted unchanged."""
        moment, wall = self._clock(), self._wall()
        records: dict[str, dict[str, Any]] = {vault: {} for vault in self._changed_vaults}
        for (vault, name), entry in self._full_reads.items():
            if vault in records and moment < entry.due:
                records[vault][name] = _record_of(entry, wall + entry.due - moment)
        self._changed_vaults.clear()
        return {vault: {"format": RECORD_FORMAT, "keys": keys} for vault, keys in records.items()}

    def recall(self, records_by_vault: Mapping[str, Mapping[str, Any]]) -> int:
        """Take in full reads another instance made (what take_changed_records gave it), where this one has
        none; records past due or unreadable are skipped (the key is read in full instead). Returns how many."""
        moment, wall = self._clock(), self._wall()
        recalled = 0
        for vault, document in records_by_vault.items():
            keys = document.get("keys") if document.get("format") == RECORD_FORMAT else None
            if not isinstance(keys, Mapping):
                continue
            for name, record in keys.items():
                cache_key = (vault, str(name))
                if cache_key in self._full_reads:
                    continue
                entry = _entry_of(record, moment - wall)
                if entry is not None and moment < entry.due and entry.key.id == cache_key:
                    self._full_reads[cache_key] = entry
                    recalled += 1
        return recalled

    def revalidatable(self) -> dict[str, list[str]]:
        """By vault URI, the names of the keys `revalidate` could confirm now (read in full, usable, not due)."""
        moment, now = self._clock(), datetime.now(UTC)
        found: dict[str, tuple[str, list[str]]] = {}
        for (vault, _), entry in self._full_reads.items():
            if _confirmable(entry, moment, now):
                found.setdefault(vault, (entry.key.vault, []))[1].append(entry.key.name)
        return dict(found.values())

    async def revalidate(self, vault_uri: str, names: Sequence[str]) -> dict[str, Key]:
        """Of `names`, by name_id, the keys whose last full read still holds, as the vault's key listing shows.

        A key qualifies when that read found its current version usable and is not yet due again; it is
        confirmed when the listing shows the same attributes for it. The listing stops once every
        candidate has been seen, or after half as many pages as candidates (past that, reading each key
        costs less). Never raises: what the listing could not confirm is left to get_key.
        """
        vault = vault_id(vault_uri)
        moment, now = self._clock(), datetime.now(UTC)
        self._sweep(moment)
        candidates: dict[str, _FullRead] = {}
        for name in names:
            entry = self._full_reads.get((vault, name_id(name)))
            if entry is not None and _confirmable(entry, moment, now):
                candidates[name_id(name)] = entry
        if len(candidates) < 2 or moment < self._list_refused_until.get(vault, 0.0):
            return {}
        page_budget = max(1, len(candidates) // 2)
        confirmed: dict[str, Key] = {}
        seen = 0
        try:
            async with aclosing(_key_listing(self._clients.key_client(vault_uri))) as pages:
                async for page in pages:
                    page_budget -= 1
                    for item in page:
                        listed = name_id(_listed_name(item))
                        entry = candidates.get(listed)
                        if entry is None:
                            continue
                        seen += 1
                        if validator_of(item) == entry.validator:
                            confirmed[listed] = entry.key
                    if seen >= len(candidates) or page_budget <= 0:
                        break
        except HttpResponseError as error:
            if error.status_code == 403:
                self._list_refused_until[vault] = moment + LIST_REFUSED_FOR
                log.info("%s: key listing refused (%s); reading keys one by one", vault_uri, describe_failure(error))
            else:
                log.debug("%s: key listing failed (%s)", vault_uri, describe_failure(error))
        except AzureError as error:
            log.debug("%s: key listing failed (%s)", vault_uri, describe_failure(error))
        return confirmed

    def _sweep(self, moment: float) -> None:
        """Forget full reads past due (keys no namespace lists any more are never read again)."""
        if moment < self._next_sweep:
            return
        self._next_sweep = moment + FULL_READ_EVERY
        for cache_key in [k for k, entry in self._full_reads.items() if entry.due <= moment]:
            del self._full_reads[cache_key]

    async def _deleted(self, vault_uri: str, name: str) -> Key | None:
        client = self._clients.key_client(vault_uri)
        try:
            deleted = await client.get_deleted_key(name)
        except ResourceNotFoundError:
            return None
        except AzureError:
            # The key is certainly not active (404 above); whether it is recoverable is all we cannot tell.
            return None
        return Key(vault=vault_uri, name=deleted.name or name, versions=(_from_key(deleted),), deleted=True)
