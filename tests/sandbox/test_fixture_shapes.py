"""The sandbox's JSON compared field by field with Microsoft's published payloads in tests/fixtures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Set
from datetime import timedelta
from typing import Any

import yaml

from monitor.sandbox import Sandbox
from tests.sandbox.clients import raw
from tests.sandbox.receiver import Receiver
from tests.sandbox.shapes import FIXTURES, differences, fixture
from tests.sandbox.world import KV_PROD, SUB_A, V3

KV_DATA = "azure-rest-api-specs/keyvault-data-plane/stable-7.5"
KV = "/keyvault/kv-prod.vault.azure.net"
API = "?api-version=7.5"
# What real Key Vault adds to the 7.5 examples (the SDK recordings show recoverableDays), and limits a version has.
KEY_EXTRAS = {"recoverableDays", "exp", "nbf"}


def _body(relative: str) -> Any:
    return fixture(relative)["responses"]["200"]["body"]


def _get(sandbox: Sandbox, method: str, path: str, body: Any = None) -> Any:
    status, _, document = asyncio.run(raw(sandbox, method, path, json_body=body))
    assert status == 200, document
    return document


def _assert_same_shape(
    expected: Any, actual: Any, *, extras: Set[str] = frozenset(), missing_ok: Set[str] = frozenset()
) -> None:
    missing, extra = differences(expected, actual)
    assert [m for m in missing if m.split(" ")[0].rsplit(".", 1)[-1] not in missing_ok] == []
    assert [e for e in extra if e.rsplit(".", 1)[-1] not in extras] == []


def test_a_key_bundle_has_the_shape_of_get_key_example(sandbox: Sandbox) -> None:
    """GET /keys/{name}/{version} answers the same fields, types and nesting as GetKey-example.json."""
    _get(sandbox, "PATCH", f"{KV}/keys/sb-cmk/{V3}{API}", {"tags": {"purpose": "unit test"}})
    ours = _get(sandbox, "GET", f"{KV}/keys/sb-cmk/{V3}{API}")
    _assert_same_shape(_body(f"{KV_DATA}/GetKey-example.json"), ours, extras=KEY_EXTRAS)
    assert ours["key"]["kid"] == f"{KV_PROD}/keys/sb-cmk/{V3}"
    assert ours["key"]["e"] == "AQAB"


def test_key_versions_have_the_shape_of_get_key_versions_example(sandbox: Sandbox) -> None:
    """A page of versions matches GetKeyVersions-example.json, nextLink included (pointing at the sandbox)."""
    ours = _get(sandbox, "GET", f"{KV}/keys/sb-cmk/versions{API}&maxresults=1")
    _assert_same_shape(_body(f"{KV_DATA}/GetKeyVersions-example.json"), ours, extras=KEY_EXTRAS)
    assert ours["nextLink"].startswith(f"{sandbox.url}{KV}/keys/sb-cmk/versions?api-version=7.5&$skiptoken=")
    assert ours["nextLink"].endswith("&maxresults=1")


def test_listed_keys_have_the_shape_of_get_keys_example(sandbox: Sandbox) -> None:
    """A page of keys matches GetKeys-example.json: kid without a version, attributes."""
    ours = _get(sandbox, "GET", f"{KV}/keys{API}&maxresults=1")
    _assert_same_shape(_body(f"{KV_DATA}/GetKeys-example.json"), ours, extras=KEY_EXTRAS)
    assert ours["value"][0]["kid"] == f"{KV_PROD}/keys/sb-cmk"


def test_a_deleted_key_has_the_shape_of_get_deleted_key_example(sandbox: Sandbox) -> None:
    """GET /deletedkeys/{name} matches GetDeletedKey-example.json: recoveryId, dates, key, attributes, tags."""
    sandbox.state.set_tags((KV_PROD, "sb-deleted"), "d" * 32, {"purpose": "unit test"}, sandbox.clock.now())
    ours = _get(sandbox, "GET", f"{KV}/deletedkeys/sb-deleted{API}")
    _assert_same_shape(_body(f"{KV_DATA}/GetDeletedKey-example.json"), ours, extras=KEY_EXTRAS)
    assert ours["scheduledPurgeDate"] - ours["deletedDate"] == 90 * 86400


def test_deleted_keys_have_the_shape_of_get_deleted_keys_example(sandbox: Sandbox) -> None:
    """GET /deletedkeys matches GetDeletedKeys-example.json."""
    ours = _get(sandbox, "GET", f"{KV}/deletedkeys{API}")
    _assert_same_shape(
        _body(f"{KV_DATA}/GetDeletedKeys-example.json"), ours, extras=KEY_EXTRAS, missing_ok={"nextLink"}
    )


def test_rotate_and_update_answer_as_their_examples(sandbox: Sandbox) -> None:
    """POST /rotate and PATCH /keys/{name}/{version} answer the shapes of RotateKey- and UpdateKey-example.json."""
    rotated = _get(sandbox, "POST", f"{KV}/keys/sb-cmk/rotate{API}")
    _assert_same_shape(_body(f"{KV_DATA}/RotateKey-example.json"), rotated, extras=KEY_EXTRAS, missing_ok={"tags"})
    request = fixture(f"{KV_DATA}/UpdateKey-example.json")["parameters"]["parameters"]
    updated = _get(sandbox, "PATCH", f"{KV}/keys/sb-cmk/{V3}{API}", request)
    _assert_same_shape(_body(f"{KV_DATA}/UpdateKey-example.json"), updated, extras=KEY_EXTRAS)
    assert updated["key"]["key_ops"] == ["decrypt", "encrypt"]
    assert (updated["attributes"]["enabled"], updated["attributes"]["nbf"], updated["attributes"]["exp"]) == (
        False,
        631180800,
        662716800,
    )


def test_a_rotation_policy_has_the_shape_of_its_example(sandbox: Sandbox) -> None:
    """After PUT of the example's policy, GET /rotationpolicy answers GetKeyRotationPolicy-example.json's shape."""
    expected = _body(f"{KV_DATA}/GetKeyRotationPolicy-example.json")
    policy = {"lifetimeActions": expected["lifetimeActions"], "attributes": {"expiryTime": "P2Y"}}
    _get(sandbox, "PUT", f"{KV}/keys/sb-cmk/rotationpolicy{API}", policy)
    ours = _get(sandbox, "GET", f"{KV}/keys/sb-cmk/rotationpolicy{API}")
    _assert_same_shape(expected, ours)
    assert ours["lifetimeActions"] == expected["lifetimeActions"]


def test_the_challenge_is_worded_as_the_recorded_one(sandbox: Sandbox) -> None:
    """The 401 challenge has the recorded WWW-Authenticate form and error body."""
    recording = yaml.safe_load(
        (
            FIXTURES
            / "azure-sdk-for-python/azure-keyvault-keys-recordings"
            / "test_challenge_auth.test_multitenant_authentication_7_3_vault.yaml"
        ).read_text(encoding="utf-8")
    )
    recorded = recording["interactions"][0]["response"]
    status, headers, body = asyncio.run(raw(sandbox, "GET", f"{KV}/keys/sb-cmk/{API}", token=None))
    assert status == recorded["status"]["code"] == 401
    recorded_header = recorded["headers"]["www-authenticate"][0]
    assert recorded_header.split("authorization=")[0] == headers["WWW-Authenticate"].split("authorization=")[0]
    assert recorded_header.split(", ")[-1] == headers["WWW-Authenticate"].split(", ")[-1]
    assert body == json.loads(recorded["body"]["string"])


def _namespace(sandbox: Sandbox, name: str) -> Any:
    path = f"/subscriptions/{SUB_A}/resourceGroups/rg-{name}/providers/Microsoft.ServiceBus/namespaces/{name}"
    return _get(sandbox, "GET", f"{path}?api-version=2026-01-01")


def test_a_namespace_has_the_shape_of_the_published_cmk_example(sandbox: Sandbox) -> None:
    """A namespace matches EHNameSpaceCreate.json's response in identity, encryption and resource fields."""
    expected = _body("azure-rest-api-specs/eventhub/stable-2024-01-01/EHNameSpaceCreate.json")
    ours = _namespace(sandbox, "sb-doomed")
    assert set(ours) == set(expected)
    _assert_same_shape(expected["identity"], ours["identity"])
    _assert_same_shape(expected["properties"]["encryption"], ours["properties"]["encryption"])
    _assert_same_shape(expected["sku"], ours["sku"])
    shared = {"provisioningState", "metricId", "createdAt", "updatedAt", "serviceBusEndpoint", "minimumTlsVersion"}
    assert shared <= set(ours["properties"]) and shared <= set(expected["properties"])
    assert ours["properties"]["encryption"]["keyVaultProperties"][0]["keyVersion"] == "c" * 32
    assert _namespace(sandbox, "sb-prod")["properties"]["encryption"]["keyVaultProperties"][0] == {
        "keyName": "sb-cmk",
        "keyVaultUri": KV_PROD,
        "keyVersion": "",  # versionless, as the published example writes it
    }


def test_a_namespace_has_the_fields_of_the_service_bus_get_example(sandbox: Sandbox) -> None:
    """A namespace has every top-level field of SBNameSpaceGet.json (2026-01-01), with the same type string."""
    expected = _body("azure-rest-api-specs/servicebus/stable-2026-01-01/SBNameSpaceGet.json")
    ours = _namespace(sandbox, "sb-prod")
    assert set(expected) <= set(ours)
    assert ours["type"] == expected["type"] == "Microsoft.ServiceBus/Namespaces"
    assert ours["properties"]["metricId"] == f"{SUB_A}:sb-prod"


def test_a_vault_has_the_shape_of_get_vault_example(sandbox: Sandbox) -> None:
    """A vault matches getVault.json, plus the soft-delete, purge-protection and RBAC flags Azure adds."""
    expected = _body("azure-rest-api-specs/keyvault-resource-manager/stable-2024-11-01/getVault.json")
    path = sandbox.vault_resource_id(KV_PROD)
    ours = _get(sandbox, "GET", f"{path}?api-version=2026-05-15")
    _assert_same_shape(
        expected,
        ours,
        extras={"enableSoftDelete", "softDeleteRetentionInDays", "enableRbacAuthorization", "enablePurgeProtection"},
        missing_ok={"hsmPoolResourceId"},  # a legacy field real vaults do not return
    )
    assert ours["properties"]["vaultUri"] == "https://kv-prod.vault.azure.net/"


def _sample(relative: str) -> Any:
    return fixture(f"azure-rest-api-specs/eventgrid-keyvault-2018-01-01/{relative}")


def test_events_have_the_envelopes_of_the_published_samples(sandbox: Sandbox) -> None:
    """Delivered events have exactly the fields of the spec's Event Grid and CloudEvents Key Vault samples."""
    with Receiver() as grid, Receiver() as cloud:
        sandbox.deliver_events_to(grid.url)
        sandbox.deliver_events_to(cloud.url, "cloudevents")
        sandbox.clock.advance(timedelta(hours=2))
        sandbox.flush_events()
    for sample, ours in (
        (_sample("event-grid-schema/secret_new_version_created.json"), grid.notifications[0].body[0]),
        (_sample("cloud-events-schema/secret_new_version_created.json"), cloud.notifications[0].body),
    ):
        _assert_same_shape(sample, ours, missing_ok={"NBF"})  # null: this version has no nbf
        assert ours["data"]["NBF"] is None
        assert isinstance(ours["data"]["EXP"], str)  # strings, as every published sample has them
