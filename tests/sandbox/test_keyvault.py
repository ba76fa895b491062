"""The Key Vault data plane of the sandbox, driven by the real async KeyClient over HTTPS."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError
from azure.keyvault.keys import (
    DeletedKey,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyVaultKey,
)

from monitor.domain.model import DeleteKey, NewVersion, RecoverKey, UpdateVersion
from monitor.sandbox import Sandbox
from tests.sandbox.clients import key_client, raw
from tests.sandbox.world import KV_DOOMED, KV_OLD, KV_PROD, NOW, V1, V2, V3, V4


def test_get_key_answers_the_current_version_with_the_vaults_real_uri(sandbox: Sandbox) -> None:
    """get_key returns the newest version created by the clock's instant, its kid on the vault's real URI."""

    async def scenario() -> KeyVaultKey:
        async with key_client(sandbox) as client:
            return await client.get_key("sb-cmk")

    key = asyncio.run(scenario())
    assert key.id == f"{KV_PROD}/keys/sb-cmk/{V3}"
    assert key.properties.vault_url == KV_PROD
    jwk: Any = key.key
    assert len(jwk.n) == 256  # a real 2048-bit modulus
    assert key.properties.recovery_level == "Recoverable"  # purge protection is on


def test_the_first_request_gets_the_key_vault_challenge(sandbox: Sandbox) -> None:
    """A request without a token gets 401 with the WWW-Authenticate challenge the SDK recordings show."""
    status, headers, body = asyncio.run(
        raw(sandbox, "GET", "/keyvault/kv-prod.vault.azure.net/keys/sb-cmk/", token=None)
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer authorization="https://login.microsoftonline.com/')
    assert headers["WWW-Authenticate"].endswith('resource="https://vault.azure.net"')
    assert body == {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}


def test_get_key_version_answers_an_older_version_with_its_own_attributes(sandbox: Sandbox) -> None:
    """get_key with a version returns that version, with its exp and key_ops."""

    async def scenario() -> KeyVaultKey:
        async with key_client(sandbox) as client:
            return await client.get_key("sb-cmk", V2)

    key = asyncio.run(scenario())
    assert key.properties.version == V2
    assert key.properties.expires_on == NOW.replace(year=2027, month=6, day=1)
    assert key.key_operations == ["wrapKey", "unwrapKey"]


def test_a_version_not_yet_created_is_not_found(sandbox: Sandbox) -> None:
    """A version the timeline creates later does not exist yet: 404 KeyNotFound."""

    async def scenario() -> None:
        async with key_client(sandbox) as client:
            await client.get_key("sb-cmk", V4)

    with pytest.raises(ResourceNotFoundError) as caught:
        asyncio.run(scenario())
    assert caught.value.error is not None and caught.value.error.code == "KeyNotFound"


def test_key_versions_are_paged_with_next_links_back_to_the_sandbox(sandbox: Sandbox) -> None:
    """list_properties_of_key_versions follows nextLink pages of maxresults items, all served by the sandbox."""

    async def scenario() -> list[str | None]:
        async with key_client(sandbox) as client:
            return [p.version async for p in client.list_properties_of_key_versions("sb-cmk", max_page_size=1)]

    assert asyncio.run(scenario()) == [V1, V2, V3]
    pages = sandbox.requests.select(service="keyvault", path="/versions", status=200)
    assert len(pages) == 3


def test_list_keys_names_the_live_keys_of_the_vault(sandbox: Sandbox) -> None:
    """list_properties_of_keys lists every key that exists and is not deleted, across pages."""

    async def scenario() -> list[str | None]:
        async with key_client(sandbox) as client:
            return [p.name async for p in client.list_properties_of_keys(max_page_size=1)]

    assert asyncio.run(scenario()) == ["sb-cmk", "sb-expiring"]


def test_a_listing_at_the_same_instant_shows_a_change_made_between_pages(sandbox: Sandbox) -> None:
    """The vault's listing is judged once per instant and World: a key deleted, or recovered, at that same
    instant is gone from, or back in, the next listing."""

    async def scenario() -> list[list[str | None]]:
        async with key_client(sandbox) as client:
            listings: list[list[str | None]] = [[p.name async for p in client.list_properties_of_keys(max_page_size=1)]]
            await client.delete_key("sb-expiring", _polling_interval=0)
            listings.append([p.name async for p in client.list_properties_of_keys(max_page_size=1)])
            await client.recover_deleted_key("sb-expiring", _polling_interval=0)
            listings.append([p.name async for p in client.list_properties_of_keys(max_page_size=1)])
            return listings

    assert asyncio.run(scenario()) == [["sb-cmk", "sb-expiring"], ["sb-cmk"], ["sb-cmk", "sb-expiring"]]


def test_a_soft_deleted_key_is_not_found_but_its_deleted_key_is(sandbox: Sandbox) -> None:
    """A soft-deleted key answers get_key 404 KeyNotFound and get_deleted_key 200 with its recovery fields."""

    async def scenario() -> tuple[ResourceNotFoundError, DeletedKey]:
        async with key_client(sandbox) as client:
            with pytest.raises(ResourceNotFoundError) as caught:
                await client.get_key("sb-deleted")
            return caught.value, await client.get_deleted_key("sb-deleted")

    error, deleted = asyncio.run(scenario())
    assert error.error is not None and error.error.code == "KeyNotFound"
    assert "A key with (name/id) sb-deleted was not found in this key vault" in error.message
    assert deleted.recovery_id == f"{KV_PROD}/deletedkeys/sb-deleted"
    assert deleted.deleted_date == NOW
    assert deleted.scheduled_purge_date == NOW + timedelta(days=90)


def test_rotate_appends_a_new_version_at_the_clock_instant(sandbox: Sandbox) -> None:
    """rotate_key creates a new current version, recorded as a NewVersion change at the clock's instant."""
    sandbox.clock.advance(timedelta(minutes=5))

    async def scenario() -> tuple[KeyVaultKey, KeyVaultKey]:
        async with key_client(sandbox) as client:
            rotated = await client.rotate_key("sb-cmk")
            return rotated, await client.get_key("sb-cmk")

    rotated, current = asyncio.run(scenario())
    assert current.properties.version == rotated.properties.version != V3
    change = sandbox.state.changes[-1]
    assert isinstance(change, NewVersion) and change.at == NOW + timedelta(minutes=5)
    assert change.version.version == rotated.properties.version


def test_rotate_takes_the_expiry_from_the_rotation_policy(sandbox: Sandbox) -> None:
    """After update_key_rotation_policy with expires_in P90D, a rotated version expires 90 days after rotation."""

    async def scenario() -> tuple[KeyRotationPolicy, KeyVaultKey]:
        async with key_client(sandbox) as client:
            await client.update_key_rotation_policy(
                "sb-cmk",
                KeyRotationPolicy(),
                lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P60D")],
                expires_in="P90D",
            )
            policy = await client.get_key_rotation_policy("sb-cmk")
            return policy, await client.rotate_key("sb-cmk")

    policy, rotated = asyncio.run(scenario())
    assert policy.expires_in == "P90D"
    assert [(a.action, a.time_after_create) for a in policy.lifetime_actions] == [("Rotate", "P60D")]
    assert rotated.properties.expires_on == NOW + timedelta(days=90)


def test_a_key_without_a_rotation_policy_has_key_vaults_default(sandbox: Sandbox) -> None:
    """get_key_rotation_policy for a key that never had one answers Key Vault's notify-30-days default."""

    async def scenario() -> KeyRotationPolicy:
        async with key_client(sandbox) as client:
            return await client.get_key_rotation_policy("sb-expiring")

    policy = asyncio.run(scenario())
    assert [(a.action, a.time_before_expiry) for a in policy.lifetime_actions] == [("Notify", "P30D")]


def test_update_key_properties_becomes_an_update_version_change(sandbox: Sandbox) -> None:
    """Disabling a version through update_key_properties appends an UpdateVersion at the clock and shows at once."""
    expires = NOW + timedelta(days=30)

    async def scenario() -> tuple[KeyVaultKey, KeyVaultKey]:
        async with key_client(sandbox) as client:
            updated = await client.update_key_properties("sb-cmk", enabled=False, expires_on=expires, tags={"a": "b"})
            return updated, await client.get_key("sb-cmk")

    updated, fetched = asyncio.run(scenario())
    assert (updated.properties.enabled, updated.properties.expires_on, updated.properties.tags) == (
        False,
        expires,
        {"a": "b"},
    )
    assert fetched.properties.enabled is False
    change = sandbox.state.changes[-1]
    assert isinstance(change, UpdateVersion)
    assert (change.version, change.enabled, change.exp, change.at) == (V3, False, expires, NOW)


def test_delete_then_recover_round_trips_through_the_timeline(sandbox: Sandbox) -> None:
    """delete_key and recover_deleted_key append DeleteKey and RecoverKey, and the key is back afterwards."""

    async def scenario() -> tuple[DeletedKey, KeyVaultKey, KeyVaultKey]:
        async with key_client(sandbox) as client:
            deleted = await client.delete_key("sb-expiring", _polling_interval=0)
            recovered = await client.recover_deleted_key("sb-expiring", _polling_interval=0)
            return deleted, recovered, await client.get_key("sb-expiring")

    deleted, recovered, fetched = asyncio.run(scenario())
    assert deleted.recovery_id == f"{KV_PROD}/deletedkeys/sb-expiring"
    assert recovered.name == fetched.name == "sb-expiring"
    assert [type(c) for c in sandbox.state.changes[-2:]] == [DeleteKey, RecoverKey]


def test_recovering_the_scenarios_deleted_key_makes_it_usable_again(sandbox: Sandbox) -> None:
    """recover_deleted_key on a key the snapshot says is deleted brings its versions back."""

    async def scenario() -> KeyVaultKey:
        async with key_client(sandbox) as client:
            await client.recover_deleted_key("sb-deleted", _polling_interval=0)
            return await client.get_key("sb-deleted")

    assert asyncio.run(scenario()).properties.version == "d" * 32


def test_purge_is_refused_while_purge_protection_is_on(sandbox: Sandbox) -> None:
    """purge_deleted_key on a purge-protected vault answers 403 Forbidden and changes nothing."""

    async def scenario() -> None:
        async with key_client(sandbox) as client:
            await client.purge_deleted_key("sb-deleted")

    with pytest.raises(HttpResponseError) as caught:
        asyncio.run(scenario())
    assert caught.value.status_code == 403
    assert len(sandbox.state.changes) == len(sandbox.scenario.changes)


def test_create_key_adds_a_key_with_the_requested_attributes(sandbox: Sandbox) -> None:
    """create_rsa_key makes a new key whose first version carries the requested ops and expiry."""
    expires = NOW + timedelta(days=365)

    async def scenario() -> KeyVaultKey:
        async with key_client(sandbox, KV_OLD) as client:
            await client.create_rsa_key(
                "sb-new", size=3072, key_operations=["wrapKey", "unwrapKey"], expires_on=expires
            )
            return await client.get_key("sb-new")

    key = asyncio.run(scenario())
    assert key.key_operations == ["wrapKey", "unwrapKey"]
    assert key.properties.expires_on == expires
    assert key.properties.recovery_level == "Recoverable+Purgeable"  # kv-old has no purge protection
    jwk: Any = key.key
    assert len(jwk.n) == 384


def test_the_scenarios_new_version_takes_effect_as_the_clock_passes_it(sandbox: Sandbox) -> None:
    """Before the new_version change get_key answers V3, after it V4."""

    async def current() -> str | None:
        async with key_client(sandbox) as client:
            return (await client.get_key("sb-cmk")).properties.version

    before = asyncio.run(current())
    sandbox.clock.advance(timedelta(hours=2))
    assert (before, asyncio.run(current())) == (V3, V4)


def test_a_deleted_vault_drops_the_connection_like_a_dns_failure(sandbox: Sandbox) -> None:
    """Once the clock passes delete_vault, the vault's requests fail to connect (ServiceRequestError)."""

    async def fetch() -> KeyVaultKey:
        async with key_client(sandbox, KV_DOOMED, retry_total=0) as client:
            return await client.get_key("sb-doomed")

    assert asyncio.run(fetch()).name == "sb-doomed"
    sandbox.clock.set(NOW + timedelta(hours=1))
    with pytest.raises(ServiceRequestError):
        asyncio.run(fetch())
    assert sandbox.requests.count(vault="kv-doomed", outcome="reset") >= 1
