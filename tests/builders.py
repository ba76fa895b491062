"""Terse builders for scenario documents, and a runner for `keyhealth simulate` in-process."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.entry.cli import main

NOW = "2026-11-22T00:00:00Z"
VAULT = "https://kv-test.vault.azure.net"
SYSTEM_PRINCIPAL = "00000000-0000-0000-0000-00000000aaaa"
USER_PRINCIPAL = "00000000-0000-0000-0000-00000000bbbb"
USER_IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-cmk"
)
ALL_NEEDED = ["get", "wrapKey", "unwrapKey"]


def vault(uri: str = VAULT, access: dict[str, list[str]] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "uri": uri,
        "soft_delete": True,
        "purge_protection": True,
        "rbac": False,
        "access": access if access is not None else {SYSTEM_PRINCIPAL: ALL_NEEDED, USER_PRINCIPAL: ALL_NEEDED},
        **fields,
    }


def version(version_id: str, created: str = "2026-01-01T00:00:00Z", **fields: Any) -> dict[str, Any]:
    return {"version": version_id, "created": created, **fields}


def key(name: str, *versions: dict[str, Any], vault_uri: str = VAULT, **fields: Any) -> dict[str, Any]:
    return {"vault": vault_uri, "name": name, "versions": list(versions) or [version("v1")], **fields}


def ref(
    name: str, vault_uri: str = VAULT, version_id: str | None = None, identity: str | None = None
) -> dict[str, Any]:
    return {"vault": vault_uri, "name": name, "version": version_id, "identity": identity}


def namespace(
    name: str,
    *refs: dict[str, Any],
    principal: str | None = SYSTEM_PRINCIPAL,
    user_assigned: dict[str, str | None] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-{name}/providers/"
        f"Microsoft.ServiceBus/namespaces/{name}",
        "name": name,
        "identity": {"principal_id": principal, "user_assigned": user_assigned or {}},
        "keys": list(refs),
        **fields,
    }


def scenario(
    namespaces: list[dict[str, Any]],
    keys: list[dict[str, Any]],
    *,
    vaults: list[dict[str, Any]] | None = None,
    changes: list[dict[str, Any]] | None = None,
    now: str = NOW,
    horizon: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "now": now,
        "vaults": vaults if vaults is not None else [vault()],
        "keys": keys,
        "namespaces": namespaces,
        "changes": changes or [],
    }
    if horizon is not None:
        document["horizon"] = horizon
    return document


@dataclass
class Run:
    """What one `keyhealth` invocation printed and returned."""

    status: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def namespace(self, name: str) -> dict[str, Any]:
        return next(n for n in self.json["namespaces"] if n["name"] == name)


def run_cli(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return Run(status, out.getvalue(), err.getvalue())


def simulate(tmp_path: Path, document: Any, *extra: str, filename: str = "scenario.json") -> Run:
    """Write `document` as a scenario file and run `keyhealth simulate FILE --format json` on it."""
    path = tmp_path / filename
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return run_cli("simulate", str(path), "--format", "json", *extra)


def codes(namespace_json: dict[str, Any]) -> set[str]:
    return {f["code"] for f in namespace_json["findings"]}


def finding(namespace_json: dict[str, Any], code: str) -> dict[str, Any]:
    return next(f for f in namespace_json["findings"] if f["code"] == code)


def key_event(
    event_type: str, vault_uri: str, key_name: str | None, event_id: str = "e-1", **data: object
) -> dict[str, Any]:
    """A Key Vault event in the Event Grid schema, as Event Grid delivers one."""
    host = vault_uri.removeprefix("https://")
    return {
        "id": event_id,
        "topic": f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{host.split('.')[0]}",
        "subject": key_name or "",
        "eventType": event_type,
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "Id": f"{vault_uri}/keys/{key_name}/0123456789abcdef0123456789abcdef" if key_name else f"{vault_uri}/",
            "VaultName": host.split(".")[0],
            "ObjectType": "Key" if key_name else "Vault",
            "ObjectName": key_name or host.split(".")[0],
            **data,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }
