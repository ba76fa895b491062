"""The current version is read from Key Vault's JSON directly: the published GetKey example, and what is not one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.adapters.keyvault import version_from_bundle

EXAMPLE = Path(__file__).parents[1] / "fixtures/azure-rest-api-specs/keyvault-data-plane/stable-7.5/GetKey-example.json"


def test_the_published_get_key_answer_reads_as_its_version():
    body = json.loads(EXAMPLE.read_text())["responses"]["200"]["body"]
    version, name, tags = version_from_bundle(body)
    attributes = body["attributes"]
    assert name == "CreateSoftKeyTest" and version.version == "78deebed173b48e48f55abf87ed4cf71"
    assert version.kty == "RSA" and version.key_size == 2048
    assert version.key_ops == ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
    assert version.enabled is attributes["enabled"]
    assert version.created == datetime.fromtimestamp(attributes["created"], UTC)
    assert version.exp is None and version.nbf is None
    assert tags == {str(k): str(v) for k, v in (body.get("tags") or {}).items()}


def test_expiry_and_not_before_are_unix_seconds():
    version, _, _ = version_from_bundle(
        {
            "key": {"kid": "https://kv.vault.azure.net/keys/k/v1", "kty": "RSA-HSM"},
            "attributes": {"exp": 1796083200, "nbf": 1764547200, "enabled": False},
        }
    )
    assert version.exp == datetime(2026, 12, 1, tzinfo=UTC) and version.nbf == datetime(2025, 12, 1, tzinfo=UTC)
    assert version.enabled is False and version.key_ops is None and version.kty == "RSA-HSM"


@pytest.mark.parametrize(
    "body", [{}, {"key": {}}, {"key": "x"}, {"key": {"kid": 3}}, {"key": {"kid": "k"}, "attributes": 1}]
)
def test_what_is_not_a_key_bundle_is_refused(body: dict[str, object]):
    with pytest.raises(ValueError, match="not a key bundle"):
        version_from_bundle(body)
