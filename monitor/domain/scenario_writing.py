"""Scenario values -> scenario documents (JSON-ready), as the spec writes them: what `check` saves and
the state store keeps."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

from monitor.domain.documents import format_instant
from monitor.domain.model import (
    KEEP,
    NETWORK_SETTINGS,
    OPEN_NETWORK,
    Change,
    DeleteVault,
    GeoPairing,
    Key,
    KeyVersion,
    Namespace,
    NamespaceIdentity,
    NewVersion,
    Observation,
    RecoverVault,
    Scenario,
    SetAccess,
    SetNetwork,
    UpdateVersion,
    Vault,
)

T = TypeVar("T")


def _optional_instant(t: datetime | None) -> str | None:
    return None if t is None else format_instant(t)


def version_document(version: KeyVersion) -> dict[str, object]:
    """One version as the format writes it."""
    return {
        "version": version.version,
        "created": format_instant(version.created),
        "enabled": version.enabled,
        "nbf": _optional_instant(version.nbf),
        "exp": _optional_instant(version.exp),
        "key_ops": None if version.key_ops is None else list(version.key_ops),
        "kty": version.kty,
        "key_size": version.key_size,
    }


class Rendered(Sequence[dict[str, object]]):
    """`items`, each made a document by `render` only when it is taken: a store writing a 100,000-namespace
    snapshot a thousand items at a time never holds every item's document at once."""

    def __init__(self, items: Sequence[T], render: Callable[[T], dict[str, object]]) -> None:
        self._items: Sequence[Any] = items
        self._render: Callable[[Any], dict[str, object]] = render

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> dict[str, object]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, object]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, object] | list[dict[str, object]]:
        if isinstance(index, slice):
            return [self._render(item) for item in self._items[index]]
        return self._render(self._items[index])


def _key_document(k: Key) -> dict[str, object]:
    return {
        "vault": k.vault,
        "name": k.name,
        "deleted": k.deleted,
        "rotation_policy": None if k.rotation_policy is None else dict(k.rotation_policy),
        "versions": [version_document(v) for v in k.versions],
        **({"access": _access_document(k.access)} if k.access else {}),
        **({"tags": dict(k.tags)} if k.tags else {}),
    }


def _identity_document(identity: NamespaceIdentity) -> dict[str, object]:
    return {"principal_id": identity.principal_id, "user_assigned": dict(identity.user_assigned)}


def _geo_dr_document(pairing: GeoPairing) -> dict[str, object]:
    document: dict[str, object] = {"alias": pairing.alias, "partner": pairing.partner, "role": pairing.role}
    if pairing.partner_blind is not None:
        document["partner_blind"] = pairing.partner_blind
    elif pairing.partner_identity is not None:
        document["partner_identity"] = _identity_document(pairing.partner_identity)
    return document


def _observed_document(observation: Observation) -> dict[str, object]:
    document: dict[str, object] = {}
    if observation.since is not None:
        document["since"] = format_instant(observation.since)
    if observation.phase is not None:
        document["phase_seconds"] = observation.phase
    if observation.unobserved is not None:
        document["unobserved"] = observation.unobserved
    if observation.diagnostics_missing:
        document["diagnostics_missing"] = True
    document["accesses"] = [
        {
            "at": format_instant(a.at),
            "key": a.key,
            "operation": a.operation,
            "status": a.status,
            **({"version": a.version} if a.version is not None else {}),
        }
        for a in observation.accesses
    ]
    return document


def _namespace_document(n: Namespace) -> dict[str, object]:
    return {
        "id": n.id,
        "name": n.name,
        "tags": dict(n.tags),
        "identity": _identity_document(n.identity),
        "keys": [{"vault": r.vault, "name": r.name, "version": r.version, "identity": r.identity} for r in n.keys],
        **({"require_infrastructure_encryption": True} if n.infrastructure_encryption else {}),
        **({"geo_dr": _geo_dr_document(n.geo_dr)} if n.geo_dr is not None else {}),
        **({"observed": _observed_document(n.observed)} if n.observed is not None else {}),
    }


def scenario_document(scenario: Scenario, *, lazy: bool = False) -> dict[str, object]:
    """The scenario as a JSON-ready document that `parse_scenario` reads back to an equal value.

    `lazy`: its keys and namespaces are Rendered sequences, not lists (for a writer that takes them a slice
    at a time, as the state stores do; json.dumps wants lists).
    """
    snapshot = scenario.snapshot
    document: dict[str, object] = {"now": format_instant(scenario.now)}
    if scenario.horizon is not None:
        document["horizon"] = format_instant(scenario.horizon)
    document["vaults"] = [_vault_document(v) for v in snapshot.vaults]
    if lazy:
        document["keys"] = Rendered(snapshot.keys, _key_document)
        document["namespaces"] = Rendered(snapshot.namespaces, _namespace_document)
    else:
        document["keys"] = [_key_document(k) for k in snapshot.keys]
        document["namespaces"] = [_namespace_document(n) for n in snapshot.namespaces]
    if scenario.changes:
        document["changes"] = [change_document(c) for c in scenario.changes]
    if snapshot.blind:
        document["blind"] = [{"scope": b.scope.value, "target": b.target, "reason": b.reason} for b in snapshot.blind]
    return document


def _access_document(access: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    return {principal: sorted(perms) for principal, perms in access.items()}


def _vault_document(vault: Vault) -> dict[str, object]:
    document: dict[str, object] = {
        "uri": vault.uri,
        "soft_delete": vault.soft_delete,
        "purge_protection": vault.purge_protection,
        "rbac": vault.rbac,
        "access": _access_document(vault.access),
    }
    if vault.deleted:
        document["deleted"] = True
    if vault.network != OPEN_NETWORK:
        document["network"] = {
            "public_network_access": vault.network.public_network_access,
            "default_action": vault.network.default_action,
            "bypass_azure_services": vault.network.bypass_azure_services,
            **({"allows_monitor": True} if vault.network.allows_monitor else {}),
        }
    return document


def change_document(change: Change) -> dict[str, object]:
    """One change as the format writes it."""
    document: dict[str, object] = {"at": format_instant(change.at), "op": change.op, "vault": change.vault}
    if isinstance(change, SetAccess):
        document["principal"] = change.principal
        document["permissions"] = sorted(change.permissions)
        return document
    if isinstance(change, DeleteVault | RecoverVault):
        return document
    if isinstance(change, SetNetwork):
        for name in NETWORK_SETTINGS:
            if (value := getattr(change, name)) is not KEEP:
                document[name] = value
        return document
    document["key"] = change.key
    if isinstance(change, NewVersion):
        document["version"] = version_document(change.version)
    elif isinstance(change, UpdateVersion):
        document["version"] = change.version
        if change.enabled is not KEEP:
            document["enabled"] = change.enabled
        if change.nbf is not KEEP:
            document["nbf"] = _optional_instant(change.nbf)
        if change.exp is not KEEP:
            document["exp"] = _optional_instant(change.exp)
        if change.key_ops is not KEEP:
            document["key_ops"] = None if change.key_ops is None else list(change.key_ops)
    return document
