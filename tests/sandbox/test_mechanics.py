"""The sandbox's own mechanics: clock, credentials, lifecycle, lookups, the timeline it appends to, the CLI entry."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.keyvault.keys import KeyClient as SyncKeyClient

from monitor.domain.errors import ScenarioError
from monitor.domain.model import UpdateVersion
from monitor.sandbox import (
    AsyncStaticTokenCredential,
    ChangeRejectedError,
    Sandbox,
    SandboxClock,
    SandboxNotRunningError,
    StaticTokenCredential,
    UnknownVaultError,
    run_sandbox,
)
from tests.sandbox.clients import key_client, raw
from tests.sandbox.world import KV_PROD, KV_RBAC, NOW, SUB_A, V3, document, scenario


def test_the_clock_stands_still_until_moved() -> None:
    """A clock with speed 0 reads its start until advance or set moves it, and tells its listeners."""
    heard: list[datetime] = []
    clock = SandboxClock(NOW)
    clock.subscribe(heard.append)
    assert clock.now() == NOW
    clock.advance(timedelta(minutes=5))
    clock.set(NOW.replace(tzinfo=None) + timedelta(hours=1))  # naive means UTC
    assert heard == [NOW + timedelta(minutes=5), NOW + timedelta(hours=1)]


def test_a_running_clock_follows_wall_time_at_its_speed() -> None:
    """With speed 60, one wall second is one sandbox minute."""
    wall = [100.0]
    clock = SandboxClock(NOW, speed=60, monotonic=lambda: wall[0])
    wall[0] += 2
    assert clock.now() == NOW + timedelta(minutes=2)


def test_the_static_credentials_give_one_far_future_token() -> None:
    """Both credentials answer get_token and get_token_info with the same token, valid long past any test."""
    sync = StaticTokenCredential("tok")
    token = sync.get_token("https://vault.azure.net/.default")
    assert isinstance(token, AccessToken) and token.token == "tok" and token.expires_on > time.time() + 10 * 365 * 86400
    assert sync.get_token_info("scope").token == "tok"

    async def both() -> tuple[AccessToken, AccessTokenInfo]:
        async with AsyncStaticTokenCredential("tok") as credential:
            return await credential.get_token("scope"), await credential.get_token_info("scope")

    assert [t.token for t in asyncio.run(both())] == ["tok", "tok"]


def test_the_synchronous_sdk_works_with_the_sync_credential(sandbox: Sandbox) -> None:
    """The synchronous KeyClient with StaticTokenCredential reads a key from the sandbox too."""
    credential = StaticTokenCredential()
    with SyncKeyClient(
        sandbox.keyvault_url(KV_PROD),
        credential,
        verify_challenge_resource=False,
        connection_verify=str(sandbox.ca_path),
    ) as client:
        assert client.get_key("sb-cmk").properties.version == V3
    assert credential.requests[0][0] == ("https://vault.azure.net/.default",)


def test_the_sandbox_runs_inside_an_existing_event_loop() -> None:
    """`async with Sandbox(...)` serves on the running loop, so async tests need no thread."""

    async def main() -> str | None:
        async with Sandbox(scenario()) as sandbox, key_client(sandbox) as client:
            return (await client.get_key("sb-cmk")).properties.version

    assert asyncio.run(main()) == V3


def test_a_sandbox_tells_clients_where_it_is(sandbox: Sandbox) -> None:
    """url, ca_path and the environment settings point at the running server and its CA."""
    assert sandbox.url.startswith("https://127.0.0.1:") and sandbox.port > 0
    assert sandbox.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert sandbox.environment() == {
        "KEYHEALTH_ARM_ENDPOINT": sandbox.url,
        "KEYHEALTH_KEYVAULT_ENDPOINT": f"{sandbox.url}/keyvault",
        "KEYHEALTH_CA_BUNDLE": str(sandbox.ca_path),
        "KEYHEALTH_STATIC_TOKEN": "sandbox",
        "KEYHEALTH_LOGS_ENDPOINT": f"{sandbox.url}/loganalytics",
    }
    assert sandbox.keyvault_url("kv-rbac") == f"{sandbox.url}/keyvault/kv-rbac.vault.azure.net"


def test_a_stopped_sandbox_has_no_url_and_removes_its_ca() -> None:
    """Before start the url is refused; after stop the temporary CA file is gone."""
    sandbox = Sandbox(scenario())
    with pytest.raises(SandboxNotRunningError):
        _ = sandbox.url
    with sandbox:
        ca = sandbox.ca_path
        assert ca.exists()
    assert not ca.exists()


def test_vaults_are_found_by_uri_host_or_name(sandbox: Sandbox) -> None:
    """Any spelling of a vault finds it; an unknown one raises UnknownVaultError."""
    rid = f"/subscriptions/{SUB_A}/resourceGroups/rg-keyvaults/providers/Microsoft.KeyVault/vaults/kv-rbac"
    assert sandbox.vault_resource_id(KV_RBAC + "/") == sandbox.vault_resource_id("KV-RBAC.vault.azure.net") == rid
    assert sandbox.vault_resource_id("kv-rbac") == rid
    with pytest.raises(UnknownVaultError):
        sandbox.vault_resource_id("https://kv-nowhere.vault.azure.net")


def test_a_vault_nobody_references_lives_in_the_first_subscription() -> None:
    """A vault no namespace uses gets the first namespace's subscription."""
    doc = document()
    doc["vaults"].append({"uri": "https://kv-lonely.vault.azure.net"})
    with Sandbox(scenario(doc)) as sandbox:
        assert sandbox.vault_resource_id("kv-lonely").startswith(f"/subscriptions/{SUB_A}/resourceGroups/rg-keyvaults/")


def test_a_change_the_world_refuses_leaves_the_timeline_as_it_was(sandbox: Sandbox) -> None:
    """apply() of an update naming a version the key lacks raises ChangeRejectedError and appends nothing."""
    before = sandbox.state.changes
    with pytest.raises(ChangeRejectedError):
        sandbox.apply(UpdateVersion(at=NOW, vault=KV_PROD, key="sb-cmk", version="nope", enabled=False))
    assert sandbox.state.changes == before


def test_the_request_log_counts_by_service_vault_and_status(sandbox: Sandbox) -> None:
    """Each answered request is logged with its service, vault and status."""
    asyncio.run(raw(sandbox, "GET", f"/keyvault/kv-prod.vault.azure.net/keys/sb-cmk/{V3}?api-version=7.5"))
    asyncio.run(raw(sandbox, "GET", "/keyvault/kv-prod.vault.azure.net/keys/nope/?api-version=7.5"))
    assert sandbox.requests.count(service="keyvault", vault="kv-prod", status=200) == 1
    assert sandbox.requests.by_status(service="keyvault") == {200: 1, 404: 1}


def test_run_sandbox_serves_a_scenario_file_until_stopped(tmp_path: Path) -> None:
    """run_sandbox prints the URL, CA path and client settings, serves, and returns 0 when stopped."""
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document()), encoding="utf-8")
    out, stop, result = io.StringIO(), threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(run_sandbox(path, 0, stdout=out, stop=stop)))
    thread.start()
    deadline = time.monotonic() + 10
    while "Press Ctrl+C" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    text = out.getvalue()
    settings = dict(
        line.strip().removeprefix("export ").split("=", 1) for line in text.splitlines() if "export " in line
    )
    assert settings["KEYHEALTH_KEYVAULT_ENDPOINT"] == settings["KEYHEALTH_ARM_ENDPOINT"] + "/keyvault"
    assert Path(settings["KEYHEALTH_CA_BUNDLE"]).exists() and settings["KEYHEALTH_STATIC_TOKEN"] == "sandbox"
    stop.set()
    thread.join(10)
    assert result == [0] and "stopped" in out.getvalue()


def test_run_sandbox_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    """An invalid scenario file raises ScenarioError naming the file, before anything listens."""
    path = tmp_path / "broken.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.json"):
        run_sandbox(path, 0, stdout=io.StringIO())
