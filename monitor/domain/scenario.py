"""Scenario documents -> Scenario values: every field checked against the spec, with errors that name
the JSON path."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from monitor.domain.documents import DocumentReader, check_once, describe_value, format_instant, parse_instant
from monitor.domain.errors import ScenarioError
from monitor.domain.model import (
    GEO_DR_ROLES,
    KEEP,
    MAX_KEYS_PER_NAMESPACE,
    NETWORK_SETTINGS,
    OPEN_NETWORK,
    BlindScope,
    BlindSpot,
    Change,
    DeleteKey,
    DeleteVault,
    GeoPairing,
    Key,
    KeyAccess,
    KeyRef,
    KeyVersion,
    Namespace,
    NamespaceIdentity,
    NewVersion,
    Observation,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    Scenario,
    SetAccess,
    SetNetwork,
    Snapshot,
    UpdateVersion,
    Vault,
    VaultNetwork,
    geo_dr_role,
    name_id,
    vault_id,
)

CHANGE_OPS = (
    "new_version",
    "update_version",
    "delete_key",
    "recover_key",
    "purge_key",
    "set_access",
    "delete_vault",
    "recover_vault",
    "set_network",
)
_TOP_FIELDS = {"now", "horizon", "vaults", "keys", "namespaces", "changes", "blind"}


def scenario_subset(document: Mapping[str, object], namespace_keys: Collection[str]) -> dict[str, object]:
    """`document` (a scenario document) cut down to the namespaces whose lower-cased ids are in `namespace_keys`,
    and the keys and vaults they list: what parse_scenario then reads for them, at a fraction of the whole
    fleet's cost. Anything malformed is kept for parse_scenario to refuse."""

    def text(item: object, name: str) -> str:
        value = item.get(name) if isinstance(item, Mapping) else None
        return value if isinstance(value, str) else ""

    raw_namespaces = document.get("namespaces")
    namespaces = [
        n
        for n in (raw_namespaces if isinstance(raw_namespaces, list) else [])
        if not isinstance(n, Mapping) or text(n, "id").strip().rstrip("/").lower() in namespace_keys
    ]
    refs = [
        ref
        for namespace in namespaces
        if isinstance(namespace, Mapping) and isinstance(namespace.get("keys"), list)
        for ref in namespace["keys"]
    ]
    changes = document.get("changes")
    changed = [c for c in changes if isinstance(c, Mapping)] if isinstance(changes, list) else []
    wanted_vaults = {vault_id(text(item, "vault")) for item in (*refs, *changed)}
    wanted_keys = {(vault_id(text(r, "vault")), name_id(text(r, "name"))) for r in refs}
    raw_keys = document.get("keys")
    keys = [
        k
        for k in (raw_keys if isinstance(raw_keys, list) else [])
        if not isinstance(k, Mapping) or (vault_id(text(k, "vault")), name_id(text(k, "name"))) in wanted_keys
    ]
    raw_vaults = document.get("vaults")
    vaults = [
        v
        for v in (raw_vaults if isinstance(raw_vaults, list) else [])
        if not isinstance(v, Mapping) or vault_id(text(v, "uri")) in wanted_vaults
    ]
    return {**document, "vaults": vaults, "keys": keys, "namespaces": namespaces}


def parse_scenario(document: object) -> tuple[Scenario, list[str]]:
    """Build a Scenario from a parsed document; also return warnings about ignored fields.

    Raises ScenarioError naming the JSON path of the first problem found.
    """
    reader = DocumentReader()
    root = reader.obj(document, "$", _TOP_FIELDS)
    if "now" not in root:
        raise ScenarioError("$.now", "required time is missing")
    now = parse_instant(root["now"], "$.now")
    horizon = reader.optional_instant(root, "horizon", "$")
    if horizon is not None and horizon <= now:
        raise ScenarioError("$.horizon", f"must be after now ({format_instant(now)})")

    vaults = [_vault(reader, v, f"$.vaults[{i}]") for i, v in enumerate(reader.items(root, "vaults", "$"))]
    vault_paths: dict[str, str] = {}
    for index, vault in enumerate(vaults):
        check_once(vault_paths, vault.id, f"$.vaults[{index}].uri", f"vault {vault.uri!r}")

    def known_vault(uri: str, path: str) -> None:
        if vault_id(uri) not in vault_paths:
            raise ScenarioError(path, f"unknown vault {uri!r}: it is not listed in $.vaults")

    keys = []
    key_paths: dict[tuple[str, str], str] = {}
    for index, item in enumerate(reader.items(root, "keys", "$")):
        path = f"$.keys[{index}]"
        key = _key(reader, item, path)
        known_vault(key.vault, f"{path}.vault")
        check_once(key_paths, key.id, f"{path}.name", f"key {key.name!r} in vault {key.vault!r}")
        keys.append(key)

    namespaces = []
    namespace_names: dict[str, str] = {}
    namespace_ids: dict[str, str] = {}
    for index, item in enumerate(reader.items(root, "namespaces", "$")):
        path = f"$.namespaces[{index}]"
        namespace = _namespace(reader, item, path)
        check_once(namespace_names, name_id(namespace.name), f"{path}.name", f"namespace name {namespace.name!r}")
        check_once(namespace_ids, name_id(namespace.id), f"{path}.id", f"namespace id {namespace.id!r}")
        for ref_index, ref in enumerate(namespace.keys):
            known_vault(ref.vault, f"{path}.keys[{ref_index}].vault")
        namespaces.append(namespace)

    changes = [_change(reader, item, f"$.changes[{i}]") for i, item in enumerate(reader.items(root, "changes", "$"))]
    for index, change in enumerate(changes):
        known_vault(change.vault, f"$.changes[{index}].vault")

    blind = tuple(_blind_spot(reader, item, f"$.blind[{i}]") for i, item in enumerate(reader.items(root, "blind", "$")))
    scenario = Scenario(
        now=now,
        horizon=horizon,
        snapshot=Snapshot(vaults=tuple(vaults), keys=tuple(keys), namespaces=tuple(namespaces), blind=blind),
        changes=tuple(changes),
    )
    return scenario, reader.warnings


def _vault(reader: DocumentReader, value: object, path: str) -> Vault:
    item = reader.obj(value, path, {"uri", "soft_delete", "purge_protection", "rbac", "access", "deleted", "network"})
    uri = reader.text(item, "uri", path)
    try:
        parts = urlsplit(uri)
    except ValueError:  # such as an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme.lower() != "https" or not parts.hostname:
        raise ScenarioError(f"{path}.uri", f"{uri!r} is not an https vault URI such as https://kv-prod.vault.azure.net")
    access = reader.access(item, path)
    # Service Bus refuses CMK on a vault without soft delete and purge protection, and neither
    # can be switched off once on, so a vault that says nothing is taken to have both.
    return Vault(
        uri=uri,
        soft_delete=reader.flag(item, "soft_delete", path, True),
        purge_protection=reader.flag(item, "purge_protection", path, True),
        rbac=reader.flag(item, "rbac", path, False),
        access=access,
        deleted=reader.flag(item, "deleted", path, False),
        network=_network(reader, item["network"], f"{path}.network")
        if item.get("network") is not None
        else OPEN_NETWORK,
    )


_DEFAULT_ACTIONS = ("allow", "deny")  # networkAcls.defaultAction, as Azure spells it: Allow or Deny


def _default_action(reader: DocumentReader, item: Mapping[str, Any], path: str) -> str:
    action = reader.text(item, "default_action", path)
    if action.strip().lower() not in _DEFAULT_ACTIONS:
        raise ScenarioError(f"{path}.default_action", f"{action!r} is neither Allow nor Deny")
    return action


def _network(reader: DocumentReader, value: object, path: str) -> VaultNetwork:
    item = reader.obj(value, path, set(NETWORK_SETTINGS))
    return VaultNetwork(
        public_network_access=reader.flag(item, "public_network_access", path, True),
        default_action=_default_action(reader, item, path) if "default_action" in item else "Allow",
        bypass_azure_services=reader.flag(item, "bypass_azure_services", path, True),
        allows_monitor=reader.flag(item, "allows_monitor", path, False),
    )


def _blind_spot(reader: DocumentReader, value: object, path: str) -> BlindSpot:
    item = reader.obj(value, path, {"scope", "target", "reason"})
    scope = item.get("scope")
    scopes = [s.value for s in BlindScope]
    if scope not in scopes:
        raise ScenarioError(f"{path}.scope", f"unknown scope {scope!r}; expected one of: {', '.join(scopes)}")
    return BlindSpot(BlindScope(scope), reader.text(item, "target", path), reader.text(item, "reason", path))


_VERSION_FIELDS = {"version", "created", "enabled", "nbf", "exp", "key_ops", "kty", "key_size"}


def _key_version(reader: DocumentReader, value: object, path: str, default_created: datetime | None) -> KeyVersion:
    item = reader.obj(value, path, _VERSION_FIELDS)
    if item.get("created") is None and default_created is not None:
        created = default_created
    else:
        if "created" not in item:
            raise ScenarioError(f"{path}.created", "required time is missing")
        created = parse_instant(item["created"], f"{path}.created")
    key_ops = item.get("key_ops")
    key_size = item.get("key_size")
    if key_size is not None and (isinstance(key_size, bool) or not isinstance(key_size, int) or key_size <= 0):
        raise ScenarioError(f"{path}.key_size", f"must be a positive whole number, got {describe_value(key_size)}")
    return KeyVersion(
        version=reader.text(item, "version", path),
        created=created,
        enabled=reader.flag(item, "enabled", path, True),
        nbf=reader.optional_instant(item, "nbf", path),
        exp=reader.optional_instant(item, "exp", path),
        key_ops=None if key_ops is None else reader.strings(key_ops, f"{path}.key_ops"),
        kty=reader.optional_text(item, "kty", path),
        key_size=key_size,
    )


def _tags(reader: DocumentReader, item: Mapping[str, object], path: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    if item.get("tags") is not None:
        for tag, tag_value in reader.obj(item["tags"], f"{path}.tags").items():
            if not isinstance(tag_value, str):
                raise ScenarioError(f"{path}.tags.{tag}", f"must be a string, got {describe_value(tag_value)}")
            tags[str(tag)] = tag_value
    return tags


def _key(reader: DocumentReader, value: object, path: str) -> Key:
    item = reader.obj(value, path, {"vault", "name", "deleted", "rotation_policy", "versions", "access", "tags"})
    versions = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(reader.items(item, "versions", path)):
        version_path = f"{path}.versions[{index}]"
        version = _key_version(reader, raw, version_path, None)
        check_once(seen, name_id(version.version), f"{version_path}.version", f"version {version.version!r}")
        versions.append(version)
    policy = item.get("rotation_policy")
    if policy is not None:
        policy = dict(reader.obj(policy, f"{path}.rotation_policy"))
    return Key(
        vault=reader.text(item, "vault", path),
        name=reader.text(item, "name", path),
        versions=tuple(versions),
        deleted=reader.flag(item, "deleted", path, False),
        rotation_policy=policy,
        access=reader.access(item, path),
        tags=_tags(reader, item, path),
    )


def _identity(reader: DocumentReader, value: object, path: str) -> NamespaceIdentity:
    """A namespace's (or Geo-DR partner's) managed identities; null: none."""
    if value is None:
        return NamespaceIdentity()
    raw_identity = reader.obj(value, path, {"principal_id", "user_assigned"})
    user_assigned: dict[str, str | None] = {}
    seen_identities: dict[str, str] = {}
    if raw_identity.get("user_assigned") is not None:
        for resource, principal in reader.obj(raw_identity["user_assigned"], f"{path}.user_assigned").items():
            check_once(
                seen_identities,
                name_id(str(resource)),
                f"{path}.user_assigned.{resource}",
                "user-assigned identity (ids compare case-insensitively)",
            )
            if principal is not None and not isinstance(principal, str):
                raise ScenarioError(
                    f"{path}.user_assigned.{resource}",
                    f"must be the identity's principal id (a string) or null, got {describe_value(principal)}",
                )
            user_assigned[str(resource)] = principal
    return NamespaceIdentity(
        principal_id=reader.optional_text(raw_identity, "principal_id", path),
        user_assigned=user_assigned,
    )


def _geo_dr_role(value: object, path: str) -> str:
    """A Geo-DR role as the scenario spells it (primary, primary_not_replicating, secondary), or as Azure does
    (Primary, PrimaryNotReplicating, Secondary): any case."""
    role = geo_dr_role(value) if isinstance(value, str) else None
    if role is not None:
        return role
    raise ScenarioError(path, f"must be one of {', '.join(GEO_DR_ROLES)}, got {describe_value(value)}")


def _geo_dr(reader: DocumentReader, value: object, path: str) -> GeoPairing:
    item = reader.obj(value, path, {"alias", "partner", "role", "partner_identity", "partner_blind"})
    return GeoPairing(
        alias=reader.text(item, "alias", path),
        partner=reader.text(item, "partner", path),
        role=_geo_dr_role(item["role"], f"{path}.role") if item.get("role") is not None else "primary",
        partner_identity=None
        if item.get("partner_blind") is not None
        else _identity(reader, item.get("partner_identity"), f"{path}.partner_identity"),
        partner_blind=reader.optional_text(item, "partner_blind", path),
    )


def _status(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ScenarioError(path, f"must be an HTTP status (an integer from 100 to 599), got {describe_value(value)}")
    return value


def _phase(value: object, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 300:
        raise ScenarioError(path, f"must be a number of seconds from 0 up to 300, got {describe_value(value)}")
    return float(value)


def _observed(reader: DocumentReader, value: object, path: str) -> Observation:
    item = reader.obj(value, path, {"since", "phase_seconds", "accesses", "unobserved", "diagnostics_missing"})
    accesses = []
    for index, raw in enumerate(reader.items(item, "accesses", path)):
        entry_path = f"{path}.accesses[{index}]"
        entry = reader.obj(raw, entry_path, {"at", "key", "operation", "status", "version"})
        key = reader.text(entry, "key", entry_path)
        if "/keys/" not in key:
            raise ScenarioError(f"{entry_path}.key", f"must be a key URL (<vault URI>/keys/<name>), got {key!r}")
        at = reader.optional_instant(entry, "at", entry_path)
        if at is None:
            raise ScenarioError(f"{entry_path}.at", "is required")
        accesses.append(
            KeyAccess(
                at=at,
                key=key,
                operation=reader.text(entry, "operation", entry_path),
                status=_status(entry.get("status"), f"{entry_path}.status"),
                version=reader.optional_text(entry, "version", entry_path),
            )
        )
    unobserved = reader.optional_text(item, "unobserved", path)
    diagnostics_missing = reader.flag(item, "diagnostics_missing", path, False)
    if diagnostics_missing and unobserved is None:
        unobserved = "no diagnostic setting sends the vaults' AuditEvent logs to a workspace the monitor reads"
    return Observation(
        accesses=tuple(accesses),
        since=reader.optional_instant(item, "since", path),
        phase=_phase(item.get("phase_seconds"), f"{path}.phase_seconds"),
        unobserved=unobserved,
        diagnostics_missing=diagnostics_missing,
    )


def _namespace(reader: DocumentReader, value: object, path: str) -> Namespace:
    item = reader.obj(
        value,
        path,
        {"id", "name", "tags", "identity", "keys", "require_infrastructure_encryption", "geo_dr", "observed"},
    )
    resource_id = reader.text(item, "id", path)
    name = reader.text(item, "name", path) if "name" in item else resource_id.rstrip("/").rsplit("/", 1)[-1]
    tags = _tags(reader, item, path)
    identity = _identity(reader, item.get("identity"), f"{path}.identity")
    raw_refs = reader.items(item, "keys", path, required=True)
    if not raw_refs:
        raise ScenarioError(f"{path}.keys", "a CMK namespace lists at least one key")
    if len(raw_refs) > MAX_KEYS_PER_NAMESPACE:
        raise ScenarioError(
            f"{path}.keys",
            f"lists {len(raw_refs)} keys; Service Bus allows at most {MAX_KEYS_PER_NAMESPACE}",
        )
    refs = []
    seen: dict[tuple[str, str, str | None, str | None], str] = {}
    for index, raw in enumerate(raw_refs):
        ref_path = f"{path}.keys[{index}]"
        ref_item = reader.obj(raw, ref_path, {"vault", "name", "version", "identity"})
        ref = KeyRef(
            vault=reader.text(ref_item, "vault", ref_path),
            name=reader.text(ref_item, "name", ref_path),
            version=reader.optional_text(ref_item, "version", ref_path),
            identity=reader.optional_text(ref_item, "identity", ref_path),
        )
        identity_key = (
            *ref.key_id,
            name_id(ref.version) if ref.version else None,
            name_id(ref.identity) if ref.identity else None,
        )
        check_once(seen, identity_key, ref_path, f"key reference to {ref.url}")
        refs.append(ref)
    return Namespace(
        id=resource_id,
        name=name,
        keys=tuple(refs),
        identity=identity,
        tags=tags,
        infrastructure_encryption=reader.flag(item, "require_infrastructure_encryption", path, False),
        geo_dr=_geo_dr(reader, item["geo_dr"], f"{path}.geo_dr") if item.get("geo_dr") is not None else None,
        observed=_observed(reader, item["observed"], f"{path}.observed") if item.get("observed") is not None else None,
    )


_CHANGE_FIELDS: Mapping[str, set[str]] = {
    "new_version": {"version"},
    "update_version": {"version", "enabled", "nbf", "exp", "key_ops"},
    "delete_key": set(),
    "recover_key": set(),
    "purge_key": set(),
    "set_access": {"principal", "permissions"},
    "delete_vault": set(),
    "recover_vault": set(),
    "set_network": set(NETWORK_SETTINGS),
}
_VAULT_ONLY_OPS = {"set_access", "delete_vault", "recover_vault", "set_network"}


def _change(reader: DocumentReader, value: object, path: str) -> Change:
    item = reader.obj(value, path)
    op = item.get("op")
    if not isinstance(op, str) or op not in _CHANGE_FIELDS:  # a list or an object is no op (nor hashable)
        raise ScenarioError(f"{path}.op", f"unknown op {op!r}; expected one of: {', '.join(CHANGE_OPS)}")
    known = {"at", "op", "vault"} | _CHANGE_FIELDS[op] | (set() if op in _VAULT_ONLY_OPS else {"key"})
    reader.obj(item, path, known)
    if "at" not in item:
        raise ScenarioError(f"{path}.at", "required time is missing")
    at = parse_instant(item["at"], f"{path}.at")
    vault = reader.text(item, "vault", path)
    if op == "set_access":
        principal = reader.text(item, "principal", path)
        if "permissions" not in item:
            raise ScenarioError(f"{path}.permissions", "required list is missing (use [] to remove access)")
        permissions = frozenset(reader.strings(item["permissions"], f"{path}.permissions"))
        return SetAccess(at=at, vault=vault, principal=principal, permissions=permissions)
    if op == "delete_vault":
        return DeleteVault(at=at, vault=vault)
    if op == "recover_vault":
        return RecoverVault(at=at, vault=vault)
    if op == "set_network":
        if not any(name in item for name in NETWORK_SETTINGS):
            raise ScenarioError(path, f"set_network sets none of: {', '.join(NETWORK_SETTINGS)}")
        return SetNetwork(
            at=at,
            vault=vault,
            public_network_access=(
                reader.flag(item, "public_network_access", path, True) if "public_network_access" in item else KEEP
            ),
            default_action=_default_action(reader, item, path) if "default_action" in item else KEEP,
            bypass_azure_services=(
                reader.flag(item, "bypass_azure_services", path, True) if "bypass_azure_services" in item else KEEP
            ),
            allows_monitor=reader.flag(item, "allows_monitor", path, False) if "allows_monitor" in item else KEEP,
        )
    key = reader.text(item, "key", path)
    if op == "new_version":
        if item.get("version") is None:
            raise ScenarioError(f"{path}.version", "required object is missing")
        return NewVersion(
            at=at, vault=vault, key=key, version=_key_version(reader, item["version"], f"{path}.version", at)
        )
    if op == "update_version":
        return _update_version(reader, item, path, at, vault, key)
    simple: dict[str, Callable[..., Change]] = {
        "delete_key": DeleteKey,
        "recover_key": RecoverKey,
        "purge_key": PurgeKey,
    }
    return simple[op](at=at, vault=vault, key=key)


def _update_version(
    reader: DocumentReader, item: Mapping[str, Any], path: str, at: datetime, vault: str, key: str
) -> UpdateVersion:
    settable = ("enabled", "nbf", "exp", "key_ops")
    if not any(name in item for name in settable):
        raise ScenarioError(path, "update_version sets none of: enabled, nbf, exp, key_ops")
    return UpdateVersion(
        at=at,
        vault=vault,
        key=key,
        version=reader.optional_text(item, "version", path),
        enabled=reader.flag(item, "enabled", path, True) if "enabled" in item else KEEP,
        nbf=reader.optional_instant(item, "nbf", path) if "nbf" in item else KEEP,
        exp=reader.optional_instant(item, "exp", path) if "exp" in item else KEEP,
        key_ops=(
            KEEP
            if "key_ops" not in item
            else None
            if item["key_ops"] is None
            else reader.strings(item["key_ops"], f"{path}.key_ops")
        ),
    )
