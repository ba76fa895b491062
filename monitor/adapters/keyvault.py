"""Keys and their versions from the Key Vault data plane (azure-keyvault-keys, aio) as domain Keys."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import AzureError, DecodeError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import DeletedKey, KeyProperties, KeyVaultKey
from azure.keyvault.keys.aio import KeyClient
from opentelemetry.trace import SpanKind

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.domain.errors import ReadError
from monitor.domain.model import Key, KeyVersion, key_url, name_id, vault_id
from monitor.domain.usability import version_reasons
from monitor.telemetry import TRACER

# A version whose creation time Key Vault did not report has existed for as long as we can tell.
_UNKNOWN_CREATION = datetime(1970, 1, 1, tzinfo=UTC)


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


async def _current_version(client: KeyClient, name: str) -> tuple[KeyVersion, str, dict[str, str]] | None:
    """GET the key's current version through the client's own pipeline (auth, retries, pacing, telemetry), read
    as JSON: the SDK's model costs a quarter of each request's CPU, on the one call a poll makes per key.
    None when the key is not there (404). Raises AzureError."""
    # Named as the SDK's own method would be: a raw request gets only the transport's span.
    with TRACER.start_as_current_span("KeyClient.get_key", kind=SpanKind.INTERNAL):
        response = await client.send_request(HttpRequest("GET", f"/keys/{quote(name, safe='')}/"))
        await response.read()
    if response.status_code == 404:
        return None
    response.raise_for_status()
    try:
        return version_from_bundle(response.json())
    except ValueError as error:  # truncated or foreign JSON: unread, never guessed
        raise DecodeError(f"unreadable key bundle: {error}", response=response) from None


class KeyVaultKeys:
    """KeyReader: the current version and pinned versions in full; every version's attributes when the
    current one is unusable (to tell whether an older one would do).

    Only the current and pinned versions carry `key_ops` (listing versions does not return them);
    older versions are read from their attributes alone. Each read learns the vault's key type, which
    sizes its request limiter.
    """

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def get_key(self, vault_uri: str, name: str, *, pinned_versions: Iterable[str] = ()) -> Key | None:
        """The key as Key Vault has it now; None when neither it nor a soft-deleted copy exists.

        Raises ReadError when the monitor could not read it (its own 401/403, timeout, 5xx, throttling).
        """
        client = self._clients.key_client(vault_uri)
        what = key_url(vault_uri, name)
        try:
            current = await _current_version(client, name)
        except AzureError as error:
            raise ReadError(what, describe_failure(error)) from error
        if current is None:
            return await self._deleted(vault_uri, name)
        latest, current_name, tags = current
        self._clients.limiter.saw_key_type(vault_id(vault_uri), latest.kty)
        versions: dict[str, KeyVersion] = {name_id(latest.version): latest}
        try:
            if version_reasons(latest, datetime.now(UTC)):
                # Only then do older versions matter (would one of them do?): a request saved per healthy key.
                async for properties in client.list_properties_of_key_versions(name):
                    versions.setdefault(name_id(properties.version or ""), _from_properties(properties))
            for pinned in pinned_versions:
                if versions.get(name_id(pinned)) is None or versions[name_id(pinned)].key_ops is None:
                    try:
                        full = await client.get_key(name, pinned)
                    except ResourceNotFoundError:
                        continue  # the pinned version does not exist: a usability fact the domain reports
                    versions[name_id(pinned)] = _from_key(full)
        except AzureError as error:
            raise ReadError(what, describe_failure(error)) from error
        ordered = sorted(versions.values(), key=lambda v: (v.created, v.version))
        return Key(vault=vault_uri, name=current_name or name, versions=tuple(ordered), tags=tags)

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
