"""The scenario the sandbox tests serve: a few vaults and keys chosen so that each API behaviour shows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from monitor.domain.model import Scenario
from monitor.domain.scenario import parse_scenario

NOW = datetime.fromisoformat("2026-11-22T00:00:00+00:00")
SUB_A = "aaaaaaaa-0000-0000-0000-000000000001"
SUB_B = "bbbbbbbb-0000-0000-0000-000000000002"
KV_PROD = "https://kv-prod.vault.azure.net"
KV_RBAC = "https://kv-rbac.vault.azure.net"
KV_OLD = "https://kv-old.vault.azure.net"
KV_DOOMED = "https://kv-doomed.vault.azure.net"
SB_PRINCIPAL = "11111111-0000-0000-0000-0000000000aa"
USER_PRINCIPAL = "22222222-0000-0000-0000-0000000000bb"
OFFICER = "33333333-0000-0000-0000-0000000000cc"
PARTIAL = "44444444-0000-0000-0000-0000000000dd"
LATECOMER = "55555555-0000-0000-0000-0000000000ee"
USER_IDENTITY = (
    f"/subscriptions/{SUB_A}/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-cmk"
)
NEEDED = ["get", "wrapKey", "unwrapKey"]
V1, V2, V3, V4 = (f"{n}" * 32 for n in "1234")
EXPIRING = "e" * 32


NAMESPACES = "/providers/Microsoft.ServiceBus/namespaces"


def at(**delta: float) -> str:
    return (NOW + timedelta(**delta)).isoformat().replace("+00:00", "Z")


def _namespace(subscription: str, name: str, *refs: dict[str, Any], **identity: Any) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription}/resourceGroups/rg-{name}{NAMESPACES}/{name}",
        "name": name,
        "tags": {"owner": "payments-oncall"},
        "identity": {"principal_id": SB_PRINCIPAL, **identity},
        "keys": list(refs),
    }


def document() -> dict[str, Any]:
    """The scenario as a document (tests may tweak a copy)."""
    return {
        "now": NOW.isoformat().replace("+00:00", "Z"),
        "vaults": [
            {"uri": KV_PROD, "access": {SB_PRINCIPAL: NEEDED, USER_PRINCIPAL: NEEDED}},
            {
                "uri": KV_RBAC + "/",
                "rbac": True,
                "access": {SB_PRINCIPAL: NEEDED, OFFICER: ["all"], PARTIAL: ["get", "wrapKey"]},
            },
            {"uri": KV_OLD, "purge_protection": False, "access": {SB_PRINCIPAL: NEEDED}},
            {"uri": KV_DOOMED, "access": {SB_PRINCIPAL: NEEDED}},
        ],
        "keys": [
            {
                "vault": KV_PROD,
                "name": "sb-cmk",
                "versions": [
                    {"version": V1, "created": "2026-01-01T00:00:00Z", "exp": "2026-12-01T00:00:00Z"},
                    {
                        "version": V2,
                        "created": "2026-06-01T00:00:00Z",
                        "exp": "2027-06-01T00:00:00Z",
                        "key_ops": ["wrapKey", "unwrapKey"],
                    },
                    {"version": V3, "created": "2026-10-01T00:00:00Z", "kty": "RSA", "key_size": 2048},
                ],
            },
            {
                "vault": KV_PROD,
                "name": "sb-deleted",
                "deleted": True,
                "versions": [{"version": "d" * 32, "created": "2026-02-01T00:00:00Z"}],
            },
            {
                "vault": KV_PROD,
                "name": "sb-expiring",
                "versions": [{"version": EXPIRING, "created": "2026-01-01T00:00:00Z", "exp": at(days=40)}],
            },
            {
                "vault": KV_RBAC,
                "name": "sb-rbac",
                "versions": [{"version": "a" * 32, "created": "2026-03-01T00:00:00Z"}],
            },
            {"vault": KV_OLD, "name": "sb-old", "versions": [{"version": "b" * 32, "created": "2026-03-01T00:00:00Z"}]},
            {
                "vault": KV_DOOMED,
                "name": "sb-doomed",
                "versions": [{"version": "c" * 32, "created": "2026-03-01T00:00:00Z"}],
            },
        ],
        "namespaces": [
            _namespace(SUB_A, "sb-prod", {"vault": KV_PROD, "name": "sb-cmk", "version": None, "identity": None}),
            _namespace(SUB_A, "sb-rbac", {"vault": KV_RBAC, "name": "sb-rbac", "version": None, "identity": None}),
            _namespace(SUB_A, "sb-old", {"vault": KV_OLD, "name": "sb-old", "version": None, "identity": None}),
            _namespace(
                SUB_A,
                "sb-doomed",
                {"vault": KV_DOOMED, "name": "sb-doomed", "version": "c" * 32, "identity": USER_IDENTITY},
                user_assigned={USER_IDENTITY: USER_PRINCIPAL},
            ),
            _namespace(SUB_B, "sb-other", {"vault": KV_PROD, "name": "sb-expiring", "version": None, "identity": None}),
        ],
        "changes": [
            {"at": at(hours=1), "op": "delete_vault", "vault": KV_DOOMED},
            {
                "at": at(hours=2),
                "op": "new_version",
                "vault": KV_PROD,
                "key": "sb-cmk",
                "version": {"version": V4, "exp": at(days=365)},
            },
            {"at": at(hours=3), "op": "set_access", "vault": KV_PROD, "principal": LATECOMER, "permissions": ["get"]},
            {"at": at(hours=3), "op": "set_access", "vault": KV_RBAC, "principal": LATECOMER, "permissions": NEEDED},
        ],
    }


def scenario(doc: dict[str, Any] | None = None) -> Scenario:
    parsed, warnings = parse_scenario(doc if doc is not None else document())
    assert warnings == []
    return parsed
