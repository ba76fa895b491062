"""Names are Key Vault's grammar or nothing: look-alike and malformed names in events are refused before any
Key Vault request (the stand-in's request log shows none), a revoked namespace stays revoked, and the
stand-in itself refuses what Key Vault refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from monitor.domain.model import name_id
from monitor.domain.names import ascii_fold, is_key_name, is_vault_name, vault_host_problem
from monitor.sandbox import Sandbox
from tests.builders import key_event
from tests.hardening.support import VAULT, fleet_document, parsed, serving
from tests.sandbox.clients import key_client

KELVIN = "\u212a"  # KELVIN SIGN: str.lower() makes it "k"
EXPIRED = "Microsoft.KeyVault.KeyExpired"
HEX = "0123456789abcdef0123456789abcdef"


def _event(event_id: str, key: str, **data: object) -> dict[str, Any]:
    event = key_event(EXPIRED, VAULT, "placeholder", event_id)
    event["data"].update({"Id": f"{VAULT}/keys/{key}/{HEX}", "ObjectName": key, **data})
    return event


HOSTILE = {
    "KELVIN SIGN in the key name": _event("h-1", f"{KELVIN}-gone"),
    "an underscore": _event("h-2", "k_gone"),
    "128 characters": _event("h-3", "k" * 128),
    "a version that is not 32 hex": _event("h-4", "k-gone", Version="v1"),
    "a version in data.Id that is not 32 hex": {
        **_event("h-5", "k-gone"),
        "data": {"Id": f"{VAULT}/keys/k-gone/zz", "ObjectName": "k-gone"},
    },
    "a non-ASCII vault name": {
        **_event("h-6", "k-gone"),
        "data": {"Id": f"https://kv-t\u00e9st.vault.azure.net/keys/k-gone/{HEX}", "ObjectName": "k-gone"},
    },
    "a KELVIN SIGN in the vault host": {
        **_event("h-7", "k-gone"),
        "data": {"Id": f"https://{KELVIN}v-test.vault.azure.net/keys/k-gone/{HEX}", "ObjectName": "k-gone"},
    },
    "a host that is not Key Vault's": {
        **_event("h-8", "k-gone"),
        "data": {"Id": f"https://kv-test.vault.example.com/keys/k-gone/{HEX}", "ObjectName": "k-gone"},
    },
    "ObjectName and data.Id naming different keys": _event("h-9", "k-gone", ObjectName="k1"),
    "a topic of another vault": {
        **_event("h-10", "k-gone"),
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-other",
    },
}


def test_hostile_names_are_refused_before_any_key_vault_request(tmp_path: Path):
    async def run() -> tuple[int, dict[str, Any], str, str]:
        async with serving(tmp_path, fleet_document()) as running:
            assert (await running.get("/status/sb-gone"))[1]["status_now"] == "revoked"
            before = running.sandbox.requests.count(service="keyvault")
            status, summary = await running.post("/api/events", list(HOSTILE.values()))
            assert status == 200, summary
            reads = running.sandbox.requests.count(service="keyvault") - before
            return reads, summary, (await running.get("/status/sb-gone"))[1]["status_now"], ""

    reads, summary, gone, _ = asyncio.run(run())
    assert reads == 0
    assert summary["outcomes"] == {"rejected": len(HOSTILE)}, summary
    reasons = {entry["id"]: entry["reason"] for entry in summary["rejected"]}
    assert "is not a Key Vault key name" in reasons["h-1"] and "\\u212a" in reasons["h-1"]  # shown escaped
    assert "is not a Key Vault key version" in reasons["h-4"] and "is not a Key Vault key version" in reasons["h-5"]
    assert "is not a vault name" in reasons["h-6"] and "is not a vault name" in reasons["h-7"]
    assert "is not a Key Vault or Managed HSM host" in reasons["h-8"]
    assert "is not the key data.Id names" in reasons["h-9"] and "is not the vault the event names" in reasons["h-10"]
    assert gone == "revoked"  # its revocation (and the gauge the Azure alert watches) did not turn unknown


def test_an_event_from_a_vault_the_fleet_does_not_use_is_acknowledged_ignored_and_counted(tmp_path: Path):
    async def run() -> tuple[int, dict[str, Any], dict[str, Any]]:
        async with serving(tmp_path, fleet_document()) as running:
            before = running.sandbox.requests.count(service="keyvault")
            event = key_event(EXPIRED, "https://kv-elsewhere.vault.azure.net", "k1", "elsewhere-1")
            status, summary = await running.post("/api/events", [event])
            assert status == 200
            health = (await running.get("/healthz"))[1]
            return running.sandbox.requests.count(service="keyvault") - before, summary, health

    reads, summary, health = asyncio.run(run())
    assert reads == 0 and summary["outcomes"] == {"ignored": 1} and health["events"]["ignored"] == 1


def test_the_stand_in_refuses_names_key_vault_refuses_through_the_real_key_client():
    async def run() -> list[tuple[int | None, str]]:
        async with Sandbox(parsed(fleet_document())) as sandbox, key_client(sandbox, VAULT, retry_total=0) as client:
            answers = []
            for name in (f"{KELVIN}1", "k_1", "k" * 128):
                try:
                    await client.get_key(name)
                except HttpResponseError as error:
                    answers.append((error.status_code, str(error.error.code if error.error else "")))
            return answers

    assert asyncio.run(run()) == [(400, "BadParameter")] * 3


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("sb-cmk", True),
        ("SB-CMK", True),
        ("k" * 127, True),
        ("k" * 128, False),
        ("", False),
        ("sb_cmk", False),
        (f"sb-cm{KELVIN}", False),
        ("sb-cmk\n", False),
        ("\uff53\uff42", False),  # fullwidth s b
        ("sb cmk", False),
    ],
)
def test_the_key_name_grammar(text: str, valid: bool):
    assert is_key_name(text) is valid


def test_vault_names_hosts_and_folding():
    assert [is_vault_name(n) for n in ("kv-prod", "k1v", "kv", "1kv", "kv--prod", "kv-", "k" * 24, "k" * 25)] == [
        True,
        True,
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    assert vault_host_problem("kv-prod.vault.azure.net") is None
    assert vault_host_problem("kv-prod.managedhsm.azure.cn") is None
    assert vault_host_problem("kv-prod.vault.azure.net.evil.com") is not None
    assert vault_host_problem(f"{KELVIN}v-prod.vault.azure.net") is not None
    assert ascii_fold(f"SB-CM{KELVIN}") == f"sb-cm{KELVIN}" and name_id(f"sb-cm{KELVIN}") != "sb-cmk"


def test_a_name_from_an_azure_answer_that_key_vault_would_refuse_is_not_sent_and_is_unknown():
    """A key name as ARM might hand it over (say, from a namespace's keyVaultProperties): never sent to Key
    Vault, and the read fails as unseen (ReadError: unknown), not as a missing key."""
    from monitor.adapters.azure_clients import AzureClients, AzureOptions
    from monitor.adapters.keyvault import KeyVaultKeys
    from monitor.domain.errors import ReadError
    from monitor.sandbox.credentials import AsyncStaticTokenCredential

    async def run() -> list[str]:
        clients = AzureClients(
            AsyncStaticTokenCredential("unused"), AzureOptions(keyvault_endpoint="https://127.0.0.1:9")
        )
        keys = KeyVaultKeys(clients)
        reasons = []
        try:
            for vault, name in [
                ("https://kv-prod.vault.azure.net", "sb-cm\u212a"),
                ("https://kv-prod.vault.azure.net", "sb cmk"),
                ("https://kv-prod.vault.azure.net", "k" * 128),
                ("https://kv-prod.evil.example", "sb-cmk"),
                ("https://kv\u2010prod.vault.azure.net", "sb-cmk"),
            ]:
                with pytest.raises(ReadError) as raised:
                    await keys.get_key(vault, name)
                reasons.append(str(raised.value))
        finally:
            await clients.close()
        return reasons

    reasons = asyncio.run(run())
    assert all("not sent to Key Vault" in reason for reason in reasons), reasons


SB = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-dr/providers/Microsoft.ServiceBus/namespaces"
)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (f"{SB}/sb-orders-dr", True),
        (f"{SB.lower()}/SB-ORDERS-DR", True),  # ARM's segments and names compare case-insensitively
        (f"{SB}/sb-orders-dr/../../../providers/Microsoft.Authorization/roleAssignments", False),
        (f"{SB}/sb-orders-dr?api-version=1", False),
        (f"{SB}/short", False),  # 6 to 50 characters
        (f"{SB}/{'a' * 51}", False),
        (f"{SB}/orders-sb", False),  # Service Bus refuses names ending in -sb or -mgmt
        (f"{SB}/orders-mgmt", False),
        (f"{SB}/1orders", False),  # from a letter
        (f"{SB}/orders-", False),
        (SB.replace("00000000-0000", "not-a-guid") + "/sb-orders-dr", False),
        (SB.replace("rg-dr", "rg.") + "/sb-orders-dr", False),  # a group may not end in a period
        (SB.replace("ServiceBus", "EventHub") + "/sb-orders-dr", False),
        (f"{SB}/sb-orders-dr{KELVIN}", False),
        (SB.replace("/subscriptions", "/\u017fubscriptions") + "/sb-orders-dr", False),  # LONG S folds to s
    ],
)
def test_the_service_bus_namespace_id_grammar(text: str, valid: bool):
    from monitor.domain.names import namespace_id_problem

    problem = namespace_id_problem(text)
    assert (problem is None) is valid
    if problem is not None:
        assert "is not a Service Bus namespace id" in problem and KELVIN not in problem
