"""Keys and their versions from the Key Vault data plane (azure-keyvault-keys, aio) as domain Keys."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.keyvault.keys import DeletedKey, KeyProperties, KeyVaultKey

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.domain.errors import ReadError
from monitor.domain.model import Key, KeyVersion, key_url, name_id, vault_id
from monitor.domain.usability import version_reasons

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
            current = await client.get_key(name)
        except ResourceNotFoundError:
            return await self._deleted(vault_uri, name)
        except AzureError as error:
            raise ReadError(what, describe_failure(error)) from error
        latest = _from_key(current)
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
        tags = {str(k): str(v) for k, v in (current.properties.tags or {}).items()}
        return Key(vault=vault_uri, name=current.name or name, versions=tuple(ordered), tags=tags)

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
