"""KeyRemediator on Azure: Key Vault keys (rotate, new version, recover) and ARM namespace encryption (unpin)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.mgmt.servicebus.models import (
    Encryption,
    KeyVaultProperties,
    SBNamespaceUpdateParameters,
    SBNamespaceUpdateProperties,
    UserAssignedIdentityProperties,
)

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.adapters.servicebus import namespace_from_arm
from monitor.domain.errors import RemediationError
from monitor.domain.model import KeyRef, KeyVersion, key_url, name_id, vault_id
from monitor.domain.remediation import RemediationPolicy


def _failure(action: str, target: str, error: AzureError) -> RemediationError:
    status = error.status_code if isinstance(error, HttpResponseError) else None
    denied = isinstance(error, ClientAuthenticationError) or status in {401, 403}
    return RemediationError(action, target, describe_failure(error), denied=denied)


def _parts(namespace_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) of a namespace's ARM id."""
    parts = namespace_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    try:
        return (
            parts[lowered.index("subscriptions") + 1],
            parts[lowered.index("resourcegroups") + 1],
            parts[lowered.index("namespaces") + 1],
        )
    except (ValueError, IndexError):
        raise RemediationError("unpin", namespace_id, "not a Service Bus namespace resource id") from None


class AzureRemediator:
    """Key writes only to keys `policy` allow-lists: a second line behind the plan, so no caller writes past it."""

    def __init__(self, clients: AzureClients, policy: RemediationPolicy) -> None:
        self._clients = clients
        self._policy = policy

    def _allowed(self, action: str, vault_uri: str, name: str) -> None:
        if not self._policy.key_allowed(vault_uri, name):
            raise RemediationError(action, key_url(vault_uri, name), "the key is not in KEYHEALTH_REMEDIATION_KEYS")

    async def get_rotation_policy(self, vault_uri: str, name: str) -> Mapping[str, object] | None:
        target = key_url(vault_uri, name)
        try:
            policy = await self._clients.key_client(vault_uri).get_key_rotation_policy(name)
        except AzureError as error:
            raise _failure("read the rotation policy of", target, error) from error
        actions: list[dict[str, Any]] = []
        for entry in policy.lifetime_actions or []:
            trigger: dict[str, str] = {}
            if entry.time_after_create:
                trigger["timeAfterCreate"] = entry.time_after_create
            if entry.time_before_expiry:
                trigger["timeBeforeExpiry"] = entry.time_before_expiry
            actions.append({"trigger": trigger, "action": {"type": str(getattr(entry.action, "value", entry.action))}})
        attributes = {"expiryTime": policy.expires_in} if policy.expires_in else {}
        return {"lifetimeActions": actions, "attributes": attributes}

    async def rotate_key(self, vault_uri: str, name: str) -> str:
        self._allowed("rotate", vault_uri, name)
        try:
            key = await self._clients.key_client(vault_uri).rotate_key(name)
        except AzureError as error:
            raise _failure("rotate", key_url(vault_uri, name), error) from error
        return key.properties.version or ""

    async def create_key_version(self, vault_uri: str, name: str, *, like: KeyVersion, expires_on: datetime) -> str:
        self._allowed("create a new version of", vault_uri, name)
        kty = like.kty or "RSA"
        options: dict[str, Any] = {"expires_on": expires_on}
        if like.key_ops is not None:
            options["key_operations"] = list(like.key_ops)
        if kty.upper().startswith("RSA") and like.key_size:
            options["size"] = like.key_size
        try:
            key = await self._clients.key_client(vault_uri).create_key(name, kty, **options)
        except AzureError as error:
            raise _failure("create a new version of", key_url(vault_uri, name), error) from error
        return key.properties.version or ""

    async def recover_key(self, vault_uri: str, name: str) -> None:
        self._allowed("recover", vault_uri, name)
        try:
            await self._clients.key_client(vault_uri).recover_deleted_key(name)
        except AzureError as error:
            raise _failure("recover", key_url(vault_uri, name), error) from error

    async def get_key_references(self, namespace_id: str) -> list[KeyRef]:
        subscription, group, name = _parts(namespace_id)
        try:
            resource = await self._clients.servicebus(subscription).namespaces.get(group, name)
        except AzureError as error:
            raise _failure("read", namespace_id, error) from error
        namespace = namespace_from_arm(resource)
        return list(namespace.keys) if namespace is not None else []

    async def unpin(self, namespace_id: str, vault_uri: str, name: str) -> None:
        subscription, group, namespace_name = _parts(namespace_id)
        client = self._clients.servicebus(subscription)
        wanted = (vault_id(vault_uri), name_id(name))
        try:
            resource = await client.namespaces.get(group, namespace_name)
            encryption = resource.properties.encryption if resource.properties else None
            entries = list(encryption.key_vault_properties or []) if encryption else []
            rewritten = []
            for entry in entries:
                mine = (vault_id(entry.key_vault_uri or ""), name_id(entry.key_name or "")) == wanted
                identity = entry.identity.user_assigned_identity if entry.identity else None
                rewritten.append(
                    KeyVaultProperties(
                        key_name=entry.key_name,
                        key_vault_uri=entry.key_vault_uri,
                        key_version=None if mine else entry.key_version,
                        identity=UserAssignedIdentityProperties(user_assigned_identity=identity) if identity else None,
                    )
                )
            keep_infrastructure = encryption.require_infrastructure_encryption if encryption else None
            update = SBNamespaceUpdateParameters(
                properties=SBNamespaceUpdateProperties(
                    encryption=Encryption(
                        key_vault_properties=rewritten,
                        key_source="Microsoft.KeyVault",
                        require_infrastructure_encryption=keep_infrastructure,
                    )
                )
            )
            await client.namespaces.update(group, namespace_name, update)
        except AzureError as error:
            raise _failure("unpin", f"{namespace_name} ({key_url(vault_uri, name)})", error) from error
