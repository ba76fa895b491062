"""Microsoft Entra ID bearer tokens, checked against the tenant's published signing keys.

Event Grid delivers to a webhook with a token it obtained for an app registration (the audience); a
scraper or an operator calling `/status` or `/metrics` brings one of its own. A token is accepted only
when PyJWT verifies its RS256 signature with a key the tenant publishes, its issuer is the tenant's
(v1 or v2 endpoint), its audience is a configured one, it has not expired (nor is not yet valid), and,
when callers are restricted, its `appid`/`azp` or `oid` is one of them.

The signing keys are fetched over HTTPS from the authority and cached. An unknown `kid` (keys roll
over) fetches them again, but at most once a minute, so tokens with made-up key ids cannot turn each
request into a fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from monitor.domain.errors import TokenError

log = logging.getLogger("keyhealth")

ALGORITHMS = ["RS256"]  # what Entra ID signs access tokens with; never "none" or a shared-key HS256
KEYS_TTL = 24 * 3600.0  # Entra ID rolls its keys over weeks; a day keeps a removed key from lingering
REFETCH_AT_MOST_EVERY = 60.0
LEEWAY = 60  # seconds of clock skew tolerated on exp and nbf
MAX_TOKEN = 16 * 1024  # Entra ID tokens are a few KB; anything far larger is not one
# The v1 endpoint's issuer host, per cloud authority (tokens for app ids are often v1).
_V1_ISSUER_HOSTS = {
    "login.microsoftonline.com": "sts.windows.net",
    "login.microsoftonline.us": "sts.windows.net",
    "login.chinacloudapi.cn": "sts.chinacloudapi.cn",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a valid token says is calling: the client application and the principal."""

    client: str | None  # appid (v1) or azp (v2): the application that asked for the token
    principal: str | None  # oid: the service principal or user


def issuers_for(authority: str, tenant: str) -> tuple[str, ...]:
    """The issuers a token of `tenant` carries: the v2 endpoint's and, for known clouds, the v1 endpoint's."""
    base = authority.rstrip("/")
    found = [f"{base}/{tenant}/v2.0"]
    host = base.split("://", 1)[-1].split("/", 1)[0].lower()
    if host in _V1_ISSUER_HOSTS:
        found.append(f"https://{_V1_ISSUER_HOSTS[host]}/{tenant}/")
    return tuple(found)


class EntraTokenValidator:
    """Validates bearer tokens for one tenant and audience set; keys fetched from `{authority}/{tenant}`."""

    def __init__(
        self,
        *,
        tenant: str,
        audiences: Sequence[str],
        authority: str = "https://login.microsoftonline.com",
        allowed_callers: Sequence[str] = (),
        ca_bundle: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.tenant = tenant
        self.audiences = list(audiences)
        self.issuers = issuers_for(authority, tenant)
        self.keys_url = f"{authority.rstrip('/')}/{tenant}/discovery/v2.0/keys"
        self._allowed = {caller.lower() for caller in allowed_callers}
        self._ssl = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -KEYS_TTL
        self._tried_at = -REFETCH_AT_MOST_EVERY
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def validate(self, token: str) -> Caller:
        """The caller a valid token names. Raises TokenError saying why a token is refused (never its text)."""
        if len(token) > MAX_TOKEN:
            raise TokenError("the bearer token is too long to be an Entra ID token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("the bearer token is not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise TokenError(f"the bearer token is signed with {str(header.get('alg'))[:20]!r}, not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("the bearer token names no signing key (kid)")
        key = await self._key(kid)
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audiences,
                issuer=list(self.issuers),
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the bearer token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenError("the bearer token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("the bearer token was issued by another tenant or authority") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the bearer token's signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise TokenError(f"the bearer token is not valid: {str(error)[:120]}") from None
        tid = claims.get("tid")
        if tid is not None and str(tid).lower() != self.tenant.lower():
            raise TokenError("the bearer token belongs to another tenant")
        client = claims.get("appid") or claims.get("azp")
        principal = claims.get("oid")
        caller = Caller(str(client) if client else None, str(principal) if principal else None)
        if self._allowed and not ({(caller.client or "").lower(), (caller.principal or "").lower()} & self._allowed):
            raise TokenError("the bearer token's caller is not one of KEYHEALTH_AUTH_ALLOWED_CALLERS")
        return caller

    async def _key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched_at < KEYS_TTL:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= KEYS_TTL
            if (stale or kid not in self._keys) and now - self._tried_at >= REFETCH_AT_MOST_EVERY:
                self._tried_at = now
                await self._fetch()
        if kid not in self._keys or time.monotonic() - self._fetched_at >= KEYS_TTL:
            raise TokenError("the bearer token is signed with a key the tenant does not publish")
        return self._keys[kid]

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.keys_url, ssl=self._ssl) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                document = json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # Keys already held stay usable until their TTL; without any, every token is refused (never let in).
            log.warning("keyhealth: could not fetch the signing keys from %s: %s", self.keys_url, error)
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, Mapping) else []:
            if not isinstance(entry, Mapping) or entry.get("kty") != "RSA" or not isinstance(entry.get("kid"), str):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(dict(entry), algorithm="RS256")
            except jwt.PyJWKError:
                continue
        if keys:
            self._keys = keys
            self._fetched_at = time.monotonic()
        else:
            log.warning("keyhealth: %s published no usable RSA signing key", self.keys_url)
