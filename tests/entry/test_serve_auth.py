"""`keyhealth serve` denies by default: credentials on every route but /healthz, Entra ID tokens checked against
a tenant's published keys (a local key set served over HTTPS), no open start-up without asking by name."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from monitor.domain.errors import SettingError
from monitor.entry.config import Settings
from monitor.entry.serve import Server, is_loopback, require_credentials
from monitor.sandbox import Sandbox
from tests.builders import VAULT, key, key_event, namespace, ref, run_cli, scenario
from tests.hardening.support import FAST_AZURE, parsed

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://keyhealth-webhook"
CALLER = "11111111-2222-3333-4444-555555555555"  # Event Grid's app id, say
KID = "test-signing-key"


def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Authority:
    """A stand-in for login.microsoftonline.com: publishes a tenant's signing keys over HTTPS and counts fetches."""

    url: str
    ca_pem: bytes
    signing: rsa.RSAPrivateKey
    fetches: list[str]

    def token(self, *, key: rsa.RSAPrivateKey | None = None, kid: str = KID, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": f"{self.url}/{TENANT}/v2.0",
            "aud": AUDIENCE,
            "tid": TENANT,
            "azp": CALLER,
            "oid": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        body.update(claims)
        pem = (key or self.signing).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return jwt.encode(body, pem, algorithm="RS256", headers={"kid": kid})


@asynccontextmanager
async def authority() -> AsyncIterator[Authority]:
    ca = trustme.CA(organization_name="test authority")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    signing = _private_key()
    published = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key()))
    published.update({"kid": KID, "use": "sig", "alg": "RS256"})
    fetches: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        fetches.append(request.match_info["tenant"])
        return web.json_response({"keys": [published]})

    app = web.Application()
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Authority(f"https://127.0.0.1:{port}", ca.cert_pem.bytes(), signing, fetches)
    finally:
        await runner.cleanup()


def _fleet() -> dict[str, Any]:
    return scenario([namespace("sb-one", ref("k1"))], [key("k1")], now=time.strftime("%Y-%m-%dT%H:%M:%SZ"))


@asynccontextmanager
async def served(tmp_path: Path, **environment: str) -> AsyncIterator[tuple[Server, str]]:
    async with Sandbox(parsed(_fleet())) as sandbox:
        env = {**sandbox.environment(), **FAST_AZURE, "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
        env.update(environment)
        if "KEYHEALTH_CA_BUNDLE" in environment:  # the authority's CA beside the stand-in's
            bundle = tmp_path / "trusted.pem"
            bundle.write_bytes(
                Path(sandbox.ca_path).read_bytes() + Path(environment["KEYHEALTH_CA_BUNDLE"]).read_bytes()
            )
            env["KEYHEALTH_CA_BUNDLE"] = str(bundle)
        server = Server.from_settings(Settings.from_environment(env), now=sandbox.clock.now)
        url = await server.start("127.0.0.1", 0)
        await server.poll_if_due()
        try:
            yield server, url
        finally:
            await server.stop()


async def _call(url: str, method: str, path: str, headers: Mapping[str, str] | None = None) -> int:
    body = json.dumps([key_event("Microsoft.KeyVault.KeyNewVersionCreated", VAULT, "k1")]).encode()
    async with aiohttp.ClientSession() as session:
        data = body if method == "POST" else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        async with session.request(method, url + path, data=data, headers=sent) as reply:
            await reply.read()
            return reply.status


ROUTES = [("POST", "/api/events"), ("GET", "/status"), ("GET", "/api/status/sb-one"), ("GET", "/metrics")]


@pytest.mark.parametrize("secret", ["", "s3cret-for-the-test"])
def test_without_a_credential_every_route_but_healthz_is_401(tmp_path, secret):
    """With the default settings (no secret, no tenant) and with a secret set, an anonymous caller gets 401
    everywhere but /healthz."""

    async def run() -> dict[str, int]:
        async with served(tmp_path, KEYHEALTH_WEBHOOK_SECRET=secret) as (server, url):
            found = {f"{method} {path}": await _call(url, method, path) for method, path in ROUTES}
            found["GET /healthz"] = await _call(url, "GET", "/healthz")
            found["refused"] = server.refused["401"]
            return found

    found = asyncio.run(run())
    assert found == {**{f"{m} {p}": 401 for m, p in ROUTES}, "GET /healthz": 200, "refused": len(ROUTES)}


def test_entra_id_tokens_are_checked_against_the_tenants_published_keys(tmp_path):
    """A token signed with the tenant's key for the configured audience passes; wrong audience, expired,
    another issuer, another key, HS256 with the public key and `none` are all 401."""

    async def run() -> tuple[dict[str, int], list[str]]:
        async with authority() as issuer:
            ca = tmp_path / "authority-ca.pem"
            ca.write_bytes(issuer.ca_pem)
            environment = {
                "KEYHEALTH_AUTH_TENANT_ID": TENANT,
                "KEYHEALTH_AUTH_AUDIENCE": AUDIENCE,
                "KEYHEALTH_AUTH_AUTHORITY": issuer.url,
                "KEYHEALTH_CA_BUNDLE": str(ca),
            }
            public_pem = issuer.signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            tokens = {
                "valid": issuer.token(),
                "wrong audience": issuer.token(aud="api://somebody-else"),
                "expired": issuer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
                "not yet valid": issuer.token(nbf=int(time.time()) + 3600),
                "other tenant": issuer.token(iss=f"{issuer.url}/{uuid.uuid4()}/v2.0"),
                "other key": issuer.token(key=_private_key()),
                "unknown kid": issuer.token(kid="made-up"),
                "hs256 with the public key": _hs256(public_pem),
                "none": jwt.encode({"aud": AUDIENCE, "exp": int(time.time()) + 60}, "", algorithm="none"),
                "not a jwt": "abc.def",
            }
            found: dict[str, int] = {}
            async with served(tmp_path, **environment) as (_, url):
                for name, token in tokens.items():
                    found[name] = await _call(url, "GET", "/status", {"Authorization": f"Bearer {token}"})
                found["valid on POST /api/events"] = await _call(
                    url, "POST", "/api/events", {"Authorization": f"Bearer {tokens['valid']}"}
                )
                found["valid on GET /metrics"] = await _call(
                    url, "GET", "/metrics", {"Authorization": f"Bearer {tokens['valid']}"}
                )
            return found, issuer.fetches

    found, fetches = asyncio.run(run())
    assert found == {
        "valid": 200,
        "wrong audience": 401,
        "expired": 401,
        "not yet valid": 401,
        "other tenant": 401,
        "other key": 401,
        "unknown kid": 401,
        "hs256 with the public key": 401,
        "none": 401,
        "not a jwt": 401,
        "valid on POST /api/events": 200,
        "valid on GET /metrics": 200,
    }
    assert fetches == [TENANT]  # the key set is cached; the unknown kid did not fetch it again within a minute


def _hs256(secret: bytes) -> str:
    """The classic algorithm confusion: HMAC keyed with the RSA public key, hoping the server verifies with it."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(json.dumps({"aud": AUDIENCE, "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_a_restricted_caller_list_refuses_other_applications(tmp_path):
    """KEYHEALTH_AUTH_ALLOWED_CALLERS: a valid token of another application is 401; the listed one passes."""

    async def run() -> tuple[int, int]:
        async with authority() as issuer:
            ca = tmp_path / "authority-ca.pem"
            ca.write_bytes(issuer.ca_pem)
            environment = {
                "KEYHEALTH_AUTH_TENANT_ID": TENANT,
                "KEYHEALTH_AUTH_AUDIENCE": AUDIENCE,
                "KEYHEALTH_AUTH_AUTHORITY": issuer.url,
                "KEYHEALTH_AUTH_ALLOWED_CALLERS": CALLER,
                "KEYHEALTH_CA_BUNDLE": str(ca),
            }
            async with served(tmp_path, **environment) as (_, url):
                listed = await _call(url, "GET", "/status", {"Authorization": f"Bearer {issuer.token()}"})
                other = issuer.token(azp=str(uuid.uuid4()))
                unlisted = await _call(url, "GET", "/status", {"Authorization": f"Bearer {other}"})
                return listed, unlisted

    assert asyncio.run(run()) == (200, 401)


def test_serve_refuses_to_start_without_a_credential(monkeypatch):
    """No secret and no tenant: `keyhealth serve` exits 2 naming the settings; `--insecure-loopback` is
    refused on an address others can reach."""
    for name in ("KEYHEALTH_WEBHOOK_SECRET", "KEYHEALTH_AUTH_TENANT_ID", "KEYHEALTH_AUTH_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    refused = run_cli("serve", "--port", "0")
    assert refused.status == 2 and refused.stdout == ""
    assert "KEYHEALTH_WEBHOOK_SECRET" in refused.stderr and "--insecure-loopback" in refused.stderr
    assert "Traceback" not in refused.stderr
    exposed = run_cli("serve", "--insecure-loopback", "--host", "0.0.0.0", "--port", "0")  # noqa: S104
    assert exposed.status == 2 and "only on a loopback address" in exposed.stderr


def test_insecure_loopback_is_open_only_on_loopback():
    settings = Settings.from_environment({})
    require_credentials(settings, "127.0.0.1", insecure_loopback=True)
    require_credentials(settings, "::1", insecure_loopback=True)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):  # noqa: S104
        with pytest.raises(SettingError, match="only on a loopback address"):
            require_credentials(settings, host, insecure_loopback=True)
    assert is_loopback("localhost") and is_loopback("[::1]") and not is_loopback("localhost.example.com")


def test_an_insecure_loopback_server_answers_without_credentials_and_warns(tmp_path, caplog):
    async def run() -> int:
        async with Sandbox(parsed(_fleet())) as sandbox:
            env = {**sandbox.environment(), **FAST_AZURE, "KEYHEALTH_SQLITE_PATH": str(tmp_path / "s.sqlite")}
            server = Server.from_settings(Settings.from_environment(env), insecure_loopback=True)
            url = await server.start("127.0.0.1", 0)
            try:
                return await _call(url, "GET", "/status")
            finally:
                await server.stop()

    with caplog.at_level("WARNING"):
        assert asyncio.run(run()) == 200
    assert "WITHOUT credentials" in caplog.text


def test_the_cloudevents_handshake_allows_only_event_grid(tmp_path):
    """OPTIONS with WebHook-Request-Origin: eventgrid.azure.net is allowed; any other origin is 403."""

    async def run() -> tuple[int, str | None, int, int]:
        async with served(tmp_path, KEYHEALTH_WEBHOOK_SECRET="s3cret") as (_, url):
            async with aiohttp.ClientSession(headers={"x-keyhealth-key": "s3cret"}) as session:
                allowed = {"WebHook-Request-Origin": "eventgrid.azure.net"}
                async with session.options(url + "/api/events", headers=allowed) as reply:
                    ok, granted = reply.status, reply.headers.get("WebHook-Allowed-Origin")
                async with session.options(
                    url + "/api/events", headers={"WebHook-Request-Origin": "evil.example"}
                ) as r:
                    other = r.status
            anonymous = await _call(url, "OPTIONS", "/api/events", allowed)
            return ok, granted, other, anonymous

    assert asyncio.run(run()) == (200, "eventgrid.azure.net", 403, 401)
