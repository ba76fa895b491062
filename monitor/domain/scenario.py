"""Scenario documents (parsed JSON or YAML) <-> Scenario values, with errors that name the JSON path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from monitor.domain.errors import ScenarioError
from monitor.domain.model import (
    KEEP,
    MAX_KEYS_PER_NAMESPACE,
    BlindScope,
    BlindSpot,
    Change,
    DeleteKey,
    DeleteVault,
    Key,
    KeyRef,
    KeyVersion,
    Namespace,
    NamespaceIdentity,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    Scenario,
    SetAccess,
    Snapshot,
    UpdateVersion,
    Vault,
    name_id,
    vault_id,
)

T = TypeVar("T")

CHANGE_OPS = (
    "new_version",
    "update_version",
    "delete_key",
    "recover_key",
    "purge_key",
    "set_access",
    "delete_vault",
    "recover_vault",
)
_TOP_FIELDS = {"now", "horizon", "vaults", "keys", "namespaces", "changes", "blind"}


def format_instant(t: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as the scenario format writes times."""
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_instant(value: object, path: str) -> datetime:
    """An ISO 8601 time (a string, or a datetime a YAML loader made); no offset means UTC.

    Raises ScenarioError naming `path` when it is not one.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScenarioError(path, f"{value!r} is not an ISO 8601 time such as 2026-11-22T00:00:00Z") from None
    else:
        raise ScenarioError(path, f"expected an ISO 8601 time such as 2026-11-22T00:00:00Z, got {_describe(value)}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # an offset that moves it before year 1 or past 9999 in UTC
        raise ScenarioError(path, f"{value!r} lies outside the years 1 to 9999 in UTC") from None


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


@dataclass
class _Reader:
    """Reads one document, remembering unknown fields as warnings."""

    warnings: list[str] = field(default_factory=list)

    def obj(self, value: object, path: str, known: set[str] | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ScenarioError(path, f"expected an object, got {_describe(value)}")
        if known is not None:
            for name in value:
                if name not in known:
                    self.warnings.append(f"{path}.{name}: unknown field, ignored")
        return value

    def items(self, parent: Mapping[str, Any], name: str, path: str, *, required: bool = False) -> list[Any]:
        if name not in parent or parent[name] is None:
            if required:
                raise ScenarioError(f"{path}.{name}", "required list is missing")
            return []
        value = parent[name]
        if not isinstance(value, list):
            raise ScenarioError(f"{path}.{name}", f"expected a list, got {_describe(value)}")
        return value

    def text(self, parent: Mapping[str, Any], name: str, path: str) -> str:
        value = parent.get(name)
        if not isinstance(value, str) or not value.strip():
            problem = "is required" if value is None else f"must be a non-empty string, got {_describe(value)}"
            raise ScenarioError(f"{path}.{name}", problem)
        return value.strip()

    def optional_text(self, parent: Mapping[str, Any], name: str, path: str) -> str | None:
        value = parent.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ScenarioError(f"{path}.{name}", f"must be a string or null, got {_describe(value)}")
        return value.strip() or None

    def flag(self, parent: Mapping[str, Any], name: str, path: str, default: bool) -> bool:
        value = parent.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{path}.{name}", f"must be true or false, got {_describe(value)}")
        return value

    def optional_instant(self, parent: Mapping[str, Any], name: str, path: str) -> datetime | None:
        value = parent.get(name)
        return None if value is None else parse_instant(value, f"{path}.{name}")

    def access(self, parent: Mapping[str, Any], path: str) -> dict[str, frozenset[str]]:
        """An `access` map: principal id -> permission names."""
        access: dict[str, frozenset[str]] = {}
        seen: dict[str, str] = {}
        raw = parent.get("access")
        if raw is not None:
            for principal, permissions in self.obj(raw, f"{path}.access").items():
                entry = f"{path}.access.{principal}"
                _once(seen, name_id(str(principal)), entry, f"principal {principal!r} (ids compare case-insensitively)")
                access[str(principal).strip()] = frozenset(self.strings(permissions, entry))
        return access

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ScenarioError(path, f"expected a list of strings, got {_describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ScenarioError(f"{path}[{index}]", f"expected a string, got {_describe(item)}")
        return tuple(item.strip() for item in value)


def _once(seen: dict[T, str], identity: T, path: str, what: str) -> None:
    if identity in seen:
        raise ScenarioError(path, f"duplicate {what}: already given at {seen[identity]}")
    seen[identity] = path


def parse_scenario(document: object) -> tuple[Scenario, list[str]]:
    """Build a Scenario from a parsed document; also return warnings about ignored fields.

    Raises ScenarioError naming the JSON path of the first problem found.
    """
    reader = _Reader()
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
        _once(vault_paths, vault.id, f"$.vaults[{index}].uri", f"vault {vault.uri!r}")

    def known_vault(uri: str, path: str) -> None:
        if vault_id(uri) not in vault_paths:
            raise ScenarioError(path, f"unknown vault {uri!r}: it is not listed in $.vaults")

    keys = []
    key_paths: dict[tuple[str, str], str] = {}
    for index, item in enumerate(reader.items(root, "keys", "$")):
        path = f"$.keys[{index}]"
        key = _key(reader, item, path)
        known_vault(key.vault, f"{path}.vault")
        _once(key_paths, key.id, f"{path}.name", f"key {key.name!r} in vault {key.vault!r}")
        keys.append(key)

    namespaces = []
    namespace_names: dict[str, str] = {}
    namespace_ids: dict[str, str] = {}
    for index, item in enumerate(reader.items(root, "namespaces", "$")):
        path = f"$.namespaces[{index}]"
        namespace = _namespace(reader, item, path)
        _once(namespace_names, name_id(namespace.name), f"{path}.name", f"namespace name {namespace.name!r}")
        _once(namespace_ids, name_id(namespace.id), f"{path}.id", f"namespace id {namespace.id!r}")
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


def _vault(reader: _Reader, value: object, path: str) -> Vault:
    item = reader.obj(value, path, {"uri", "soft_delete", "purge_protection", "rbac", "access", "deleted"})
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
    )


def _blind_spot(reader: _Reader, value: object, path: str) -> BlindSpot:
    item = reader.obj(value, path, {"scope", "target", "reason"})
    scope = item.get("scope")
    scopes = [s.value for s in BlindScope]
    if scope not in scopes:
        raise ScenarioError(f"{path}.scope", f"unknown scope {scope!r}; expected one of: {', '.join(scopes)}")
    return BlindSpot(BlindScope(scope), reader.text(item, "target", path), reader.text(item, "reason", path))


_VERSION_FIELDS = {"version", "created", "enabled", "nbf", "exp", "key_ops", "kty", "key_size"}


def _key_version(reader: _Reader, value: object, path: str, default_created: datetime | None) -> KeyVersion:
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
        raise ScenarioError(f"{path}.key_size", f"must be a positive whole number, got {_describe(key_size)}")
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


def _tags(reader: _Reader, item: Mapping[str, object], path: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    if item.get("tags") is not None:
        for tag, tag_value in reader.obj(item["tags"], f"{path}.tags").items():
            if not isinstance(tag_value, str):
                raise ScenarioError(f"{path}.tags.{tag}", f"must be a string, got {_describe(tag_value)}")
            tags[str(tag)] = tag_value
    return tags


def _key(reader: _Reader, value: object, path: str) -> Key:
    item = reader.obj(value, path, {"vault", "name", "deleted", "rotation_policy", "versions", "access", "tags"})
    versions = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(reader.items(item, "versions", path)):
        version_path = f"{path}.versions[{index}]"
        version = _key_version(reader, raw, version_path, None)
        _once(seen, name_id(version.version), f"{version_path}.version", f"version {version.version!r}")
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


def _namespace(reader: _Reader, value: object, path: str) -> Namespace:
    item = reader.obj(value, path, {"id", "name", "tags", "identity", "keys"})
    resource_id = reader.text(item, "id", path)
    name = reader.text(item, "name", path) if "name" in item else resource_id.rstrip("/").rsplit("/", 1)[-1]
    tags = _tags(reader, item, path)
    identity = NamespaceIdentity()
    if item.get("identity") is not None:
        raw_identity = reader.obj(item["identity"], f"{path}.identity", {"principal_id", "user_assigned"})
        user_assigned: dict[str, str | None] = {}
        seen_identities: dict[str, str] = {}
        if raw_identity.get("user_assigned") is not None:
            for resource, principal in reader.obj(
                raw_identity["user_assigned"], f"{path}.identity.user_assigned"
            ).items():
                _once(
                    seen_identities,
                    name_id(str(resource)),
                    f"{path}.identity.user_assigned.{resource}",
                    "user-assigned identity (ids compare case-insensitively)",
                )
                if principal is not None and not isinstance(principal, str):
                    raise ScenarioError(
                        f"{path}.identity.user_assigned.{resource}",
                        f"must be the identity's principal id (a string) or null, got {_describe(principal)}",
                    )
                user_assigned[str(resource)] = principal
        identity = NamespaceIdentity(
            principal_id=reader.optional_text(raw_identity, "principal_id", f"{path}.identity"),
            user_assigned=user_assigned,
        )
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
        _once(seen, identity_key, ref_path, f"key reference to {ref.url}")
        refs.append(ref)
    return Namespace(id=resource_id, name=name, keys=tuple(refs), identity=identity, tags=tags)


_CHANGE_FIELDS: Mapping[str, set[str]] = {
    "new_version": {"version"},
    "update_version": {"version", "enabled", "nbf", "exp", "key_ops"},
    "delete_key": set(),
    "recover_key": set(),
    "purge_key": set(),
    "set_access": {"principal", "permissions"},
    "delete_vault": set(),
    "recover_vault": set(),
}
_VAULT_ONLY_OPS = {"set_access", "delete_vault", "recover_vault"}


def _change(reader: _Reader, value: object, path: str) -> Change:
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
    reader: _Reader, item: Mapping[str, Any], path: str, at: datetime, vault: str, key: str
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


# --- writing -------------------------------------------------------------------------------------


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
