"""Injected faults, latency and the per-vault rate limit, as the real SDK clients experience them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from azure.core.exceptions import (
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import KeyVaultKey
from azure.mgmt.servicebus.models import SBNamespace

from monitor.sandbox import RateLimit, Sandbox
from tests.sandbox.clients import key_client, servicebus
from tests.sandbox.world import KV_PROD, scenario


async def _get_key(sandbox: Sandbox, **options: Any) -> KeyVaultKey:
    async with key_client(sandbox, retry_total=0, **options) as client:
        return await client.get_key("sb-cmk")


def test_a_status_fault_answers_with_the_services_error_body_and_retry_after(sandbox: Sandbox) -> None:
    """respond(503, retry_after=7) makes Key Vault answer 503 with its error body and the Retry-After header."""
    sandbox.faults.respond(503, service="keyvault", retry_after=7)
    with pytest.raises(HttpResponseError) as caught:
        asyncio.run(_get_key(sandbox))
    assert caught.value.status_code == 503
    assert caught.value.error is not None and caught.value.error.code == "ServiceUnavailable"
    response: Any = caught.value.response
    assert response.headers["Retry-After"] == "7"


def test_forbid_makes_a_vault_answer_403_to_everyone(sandbox: Sandbox) -> None:
    """forbid(vault) is the monitor's own 403: Forbidden with innererror AccessDenied, for any token."""
    sandbox.faults.forbid(KV_PROD)
    with pytest.raises(HttpResponseError) as caught:
        asyncio.run(_get_key(sandbox))
    assert caught.value.status_code == 403
    response: Any = caught.value.response
    error = response.json()["error"]
    assert (error["code"], error["innererror"]["code"]) == ("Forbidden", "AccessDenied")
    assert "does not have keys get permission on key vault 'kv-prod" in error["message"]


def test_a_fault_limited_to_n_matches_lets_later_requests_through(sandbox: Sandbox) -> None:
    """A rule with times=1 fails the first matching request only; the SDK's retry then succeeds."""
    rule = sandbox.faults.respond(500, service="keyvault", path="/keys/sb-cmk", times=1)

    async def fetch() -> KeyVaultKey:
        async with key_client(sandbox, retry_backoff_factor=0.01) as client:
            return await client.get_key("sb-cmk")

    assert asyncio.run(fetch()).name == "sb-cmk"
    assert rule.matched == 1 and sandbox.requests.count(status=500) == 1


def test_a_delay_fault_slows_the_answer(sandbox: Sandbox) -> None:
    """delay(0.3) makes matching answers take at least 0.3 s, and they still succeed."""
    sandbox.faults.delay(0.3, method="GET", path=r"/keys/sb-cmk/$")
    started = time.monotonic()
    asyncio.run(_get_key(sandbox))
    assert time.monotonic() - started >= 0.3


def test_global_latency_applies_to_every_request(sandbox: Sandbox) -> None:
    """faults.latency adds that many seconds to each answer, ARM included."""
    sandbox.faults.latency = 0.1

    async def listed() -> list[SBNamespace]:
        async with servicebus(sandbox) as client:
            return [n async for n in client.namespaces.list()]

    asyncio.run(listed())
    assert all(r.seconds >= 0.1 for r in sandbox.requests.records)


def test_a_hang_outlasts_the_clients_read_timeout(sandbox: Sandbox) -> None:
    """hang() never answers: a client with a 0.3 s read timeout gives up with ServiceResponseError."""
    sandbox.faults.hang(service="keyvault", path="/keys/sb-cmk/$")
    with pytest.raises(ServiceResponseError):
        asyncio.run(_get_key(sandbox, read_timeout=0.3))


def test_a_reset_fault_drops_the_connection(sandbox: Sandbox) -> None:
    """reset() closes the connection without an answer: the SDK raises ServiceRequestError."""
    sandbox.faults.reset(vault="kv-prod")
    with pytest.raises(ServiceRequestError):
        asyncio.run(_get_key(sandbox))
    assert sandbox.requests.count(outcome="reset") >= 1


def test_a_truncated_body_fails_to_decode(sandbox: Sandbox) -> None:
    """truncate() sends half the JSON body: the SDK cannot decode it."""
    sandbox.faults.truncate(service="keyvault", path="/keys/sb-cmk/$")
    with pytest.raises((DecodeError, ValueError)):
        asyncio.run(_get_key(sandbox))


def test_a_fault_can_fail_only_the_next_link_page() -> None:
    """next_page_only fails the second page of a listing while the first page succeeds."""
    with Sandbox(scenario(), arm_page_size=2) as sandbox:
        sandbox.faults.respond(500, service="arm", next_page_only=True)

        async def listed() -> list[str | None]:
            names = []
            async with servicebus(sandbox, retry_total=0) as client:
                async for namespace in client.namespaces.list():
                    names.append(namespace.name)
            return names

        with pytest.raises(HttpResponseError) as caught:
            asyncio.run(listed())
        assert caught.value.status_code == 500
        assert [r.status for r in sandbox.requests.select(service="arm")] == [200, 500]


def test_the_rate_limit_throttles_a_vault_with_retry_after() -> None:
    """Above the per-vault limit Key Vault answers 429 Throttled with a Retry-After in seconds."""
    with Sandbox(scenario(), rate_limit=RateLimit(requests=3, window=10.0)) as sandbox:

        async def burst() -> None:
            async with key_client(sandbox, retry_total=0) as client:
                for _ in range(3):
                    await client.get_key("sb-cmk")
                await client.get_key("sb-cmk")

        with pytest.raises(HttpResponseError) as caught:
            asyncio.run(burst())
        assert caught.value.status_code == 429
        assert caught.value.error is not None and caught.value.error.code == "Throttled"
        response: Any = caught.value.response
        assert 1 <= int(response.headers["Retry-After"]) <= 10


def test_the_default_rate_limit_is_key_vaults() -> None:
    """Unless told otherwise the sandbox allows 4,000 requests per 10 s per vault, as Key Vault does."""
    with Sandbox(scenario()) as sandbox:
        assert sandbox.faults.rate_limit == RateLimit(requests=4000, window=10.0)
