"""Scenario values -> scenario documents (JSON-ready), as the spec writes them: what `check` saves and
the state store keeps."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from monitor.domain.documents import format_instant
from monitor.domain.model import (
    KEEP,
    Change,
    DeleteVault,
    KeyVersion,
    NewVersion,
    RecoverVault,
    Scenario,
    SetAccess,
    UpdateVersion,
    Vault,
)


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


def scenario_document(scenario: Scenario) -> dict[str, object]:
    """The scenario as a JSON-ready document that `parse_scenario` reads back to an equal value."""
    snapshot = scenario.snapshot
    document: dict[str, object] = {"now": format_instant(scenario.now)}
    if scenario.horizon is not None:
        document["horizon"] = format_instant(scenario.horizon)
    document["vaults"] = [_vault_document(v) for v in snapshot.vaults]
    document["keys"] = [
        {
            "vault": k.vault,
            "name": k.name,
            "deleted": k.deleted,
            "rotation_policy": None if k.rotation_policy is None else dict(k.rotation_policy),
            "versions": [version_document(v) for v in k.versions],
            **({"access": _access_document(k.access)} if k.access else {}),
            **({"tags": dict(k.tags)} if k.tags else {}),
        }
        for k in snapshot.keys
    ]
    document["namespaces"] = [
        {
            "id": n.id,
            "name": n.name,
            "tags": dict(n.tags),
            "identity": {
                "principal_id": n.identity.principal_id,
                "user_assigned": dict(n.identity.user_assigned),
            },
            "keys": [{"vault": r.vault, "name": r.name, "version": r.version, "identity": r.identity} for r in n.keys],
        }
        for n in snapshot.namespaces
    ]
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
