"""Namespaces as ARM publishes them become domain Namespaces; only Premium CMK ones count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from azure.mgmt.servicebus.models import SBNamespace

from monitor.adapters.servicebus import namespace_from_arm, namespace_from_document

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure-rest-api-specs"


def _published(relative: str) -> dict[str, Any]:
    document = json.loads((FIXTURES / relative).read_text(encoding="utf-8"))
    response = document["responses"].get("200") or document["responses"]["201"]
    body: dict[str, Any] = response["body"]
    return body


def _premium(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "sku": {"name": "Premium", "tier": "Premium", "capacity": 1}}


def test_the_published_cmk_example_reads_as_a_versionless_user_assigned_reference():
    """Microsoft's identity + CMK example: keyVersion "" means versionless, the user-assigned identity resolves."""
    body = _premium(_published("eventhub/stable-2024-01-01/EHNameSpaceCreate.json"))
    namespace = namespace_from_arm(SBNamespace(body))
    assert namespace is not None
    assert namespace.name == "NamespaceSample"
    (ref,) = namespace.keys
    assert ref.name == "Samplekey"
    assert ref.vault == "https://sample-keyvault-user.vault-int.azure-int.net"
    assert ref.version is None
    assert ref.identity is not None and ref.identity.endswith("/userAssignedIdentities/ud1")
    assert namespace.identity.principal_id == "PrincipalIdGUID"
    assert namespace.identity.principal_for(ref.identity) == "principalidguid"


def test_the_same_namespace_on_the_standard_tier_is_not_part_of_the_fleet():
    """The published example as published (Standard tier) is skipped: CMK needs Premium."""
    assert namespace_from_arm(SBNamespace(_published("eventhub/stable-2024-01-01/EHNameSpaceCreate.json"))) is None


def test_service_bus_namespaces_without_encryption_are_skipped():
    """Every published Service Bus namespace example lacks `encryption`: none is a CMK namespace."""
    for relative in (
        "servicebus/stable-2026-01-01/SBNameSpaceGet.json",
        "servicebus/stable-2026-01-01/SBNameSpaceCreate.json",
        "servicebus/preview-2025-05-01-preview/SBNameSpaceCreate.json",
        "servicebus/preview-2026-07-01-preview/SBNameSpaceUpdate.json",
    ):
        assert namespace_from_arm(SBNamespace(_premium(_published(relative)))) is None, relative


def test_a_pinned_version_and_the_system_identity_are_kept():
    """keyVersion set means pinned; no identity on the entry means the system-assigned identity."""
    body = _premium(_published("eventhub/stable-2024-01-01/EHNameSpaceCreate.json"))
    entry = body["properties"]["encryption"]["keyVaultProperties"][0]
    entry["keyVersion"] = "0f1e2d3c"
    del entry["identity"]
    namespace = namespace_from_arm(SBNamespace(body))
    assert namespace is not None
    assert namespace.keys[0].version == "0f1e2d3c"
    assert namespace.keys[0].identity is None


def _recased(value: Any) -> Any:
    """Every member name in another case, as ARM does not promise one."""
    if isinstance(value, dict):
        return {key[:1].upper() + key[1:]: _recased(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_recased(item) for item in value]
    return value


def test_a_resource_graph_row_reads_as_the_sdk_model_does_whatever_the_member_names_case():
    """namespace_from_document (Resource Graph's raw rows) and namespace_from_arm (the SDK's model) agree."""
    body = _premium(_published("eventhub/stable-2024-01-01/EHNameSpaceCreate.json"))
    expected = namespace_from_arm(SBNamespace(body))
    assert expected is not None
    assert namespace_from_document(body) == expected
    assert namespace_from_document(_recased(body)) == expected
    # A Standard namespace takes no CMK unless it is an Event Hubs one in a Dedicated cluster, as this one is.
    standard = {**body, "sku": {"name": "Standard", "tier": "Standard"}}
    assert namespace_from_document(standard) == expected
    alone = {**standard, "properties": {k: v for k, v in body["properties"].items() if k != "clusterArmId"}}
    assert namespace_from_document(alone) is None
