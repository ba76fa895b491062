"""Geo-DR pairings of CMK namespaces (`disasterRecoveryConfigs`) and the identities their partners would use,
from ARM (azure-mgmt-servicebus and azure-mgmt-eventhub, aio: both services pair the same way)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.adapters.servicebus import identity_from_arm
from monitor.domain.errors import ReadError
from monitor.domain.model import (
    GeoPairing,
    Namespace,
    NamespaceIdentity,
    NamespaceKind,
    geo_dr_role,
    kind_of,
    resource_group_of,
    subscription_of,
)
from monitor.domain.names import is_namespace_name, namespace_id_problem


def _role(value: object) -> str:
    # Azure's three roles; an unknown one is judged as a primary.
    return geo_dr_role(str(getattr(value, "value", value) or "")) or "primary"


def partner_id(namespace: Namespace, partner: str) -> str:
    """The partner's ARM id. ARM gives one, but the published example gives a bare name: that one is taken to
    be in the namespace's own resource group (a wrong guess is a 404, which says the partner was not read)."""
    if partner.startswith("/") or not is_namespace_name(partner):
        return partner
    return (
        f"/subscriptions/{subscription_of(namespace.id)}/resourceGroups/{namespace.resource_group}"
        f"/providers/{namespace.kind.provider}/namespaces/{partner}"
    )


class GeoDrReader:
    """PairingReader over ARM: a namespace's disaster-recovery configurations, and its partner's identity."""

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def read_pairing(self, namespace: Namespace) -> GeoPairing | None:
        """The namespace's pairing (None: it has none). Raises ReadError when its configurations cannot be
        listed; a partner that cannot be read is a pairing with `partner_blind` set."""
        group = namespace.resource_group
        if not group:
            raise ReadError(f"Geo-DR configurations of {namespace.name}", "the namespace id names no resource group")
        client = self._client(namespace.kind, subscription_of(namespace.id))
        try:
            configs = [c async for c in client.disaster_recovery_configs.list(group, namespace.name)]
        except AzureError as error:
            raise ReadError(f"Geo-DR configurations of {namespace.name}", describe_failure(error)) from error
        for config in configs:
            partner = str(config.partner_namespace or "").strip()
            if not partner:
                continue  # a configuration being set up or broken names no partner yet
            pairing = GeoPairing(
                alias=config.name or "", partner=partner_id(namespace, partner), role=_role(config.role)
            )
            if not pairing.is_primary:
                return pairing  # a secondary's failover is judged on its primary
            problem = namespace_id_problem(pairing.partner, namespace.kind.provider)  # the partner is of its kind
            if problem is not None:  # never sent on as a path: ARM's answer is checked like any input
                return replace(pairing, partner_blind=f"ARM named {problem}")
            try:
                return replace(pairing, partner_identity=await self._identity_of(pairing.partner))
            except ReadError as failure:
                return replace(pairing, partner_blind=failure.reason)
        return None

    def _client(self, kind: NamespaceKind, subscription: str) -> Any:
        if kind is NamespaceKind.EVENT_HUBS:
            return self._clients.eventhub(subscription)
        return self._clients.servicebus(subscription)

    async def _identity_of(self, resource_id: str) -> NamespaceIdentity:
        name = resource_id.rstrip("/").rsplit("/", 1)[-1]
        group = resource_group_of(resource_id) or ""
        client = self._client(kind_of(resource_id), subscription_of(resource_id))
        try:
            resource = await client.namespaces.get(group, name)
        except ResourceNotFoundError as error:
            raise ReadError(f"partner namespace {name}", f"not found ({describe_failure(error)})") from error
        except AzureError as error:
            raise ReadError(f"partner namespace {name}", describe_failure(error)) from error
        return identity_from_arm(resource)
