"""A fixed bearer token in the shapes azure-core asks of a credential: Entra ID's stand-in for local stand-ins."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

DEFAULT_TOKEN = "sandbox"  # noqa: S105 - what the local stand-in accepts; never sent to Azure
# Far enough ahead that no client ever refreshes it, yet a valid 32-bit Unix time (year 2100).
FAR_FUTURE = 4_102_444_800


class _StaticToken:
    """What both credentials share: the token, and the scopes and tenants asked for (for tests to read)."""

    def __init__(self, token: str, expires_on: int) -> None:
        if not token:
            raise ValueError("the static token must not be empty")
        self.token = token
        self.expires_on = expires_on
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    def __repr__(self) -> str:  # the token is a secret: keep it out of logs and tracebacks
        return f"{type(self).__name__}(***)"

    def _access_token(self, scopes: tuple[str, ...], tenant_id: str | None) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        return AccessToken(self.token, self.expires_on)

    def _access_token_info(self, scopes: tuple[str, ...], options: TokenRequestOptions | None) -> AccessTokenInfo:
        tenant_id = options.get("tenant_id") if options else None
        self.requests.append((scopes, tenant_id))
        # refresh_on far ahead too: azure-core refreshes when refresh_on passes.
        return AccessTokenInfo(self.token, self.expires_on, refresh_on=self.expires_on - 3600)


class StaticTokenCredential(_StaticToken):
    """A synchronous credential (`TokenCredential` and `SupportsTokenInfo`) that always returns one token."""

    def __init__(self, token: str = DEFAULT_TOKEN, *, expires_on: int | None = None) -> None:
        super().__init__(token, FAR_FUTURE if expires_on is None else expires_on)

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """The static token, whatever the scopes."""
        return self._access_token(scopes, tenant_id)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """The static token with its expiry, whatever the scopes."""
        return self._access_token_info(scopes, options)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> StaticTokenCredential:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()


class AsyncStaticTokenCredential(_StaticToken):
    """An asynchronous credential (`AsyncTokenCredential` and `AsyncSupportsTokenInfo`) for the aio SDK clients.

    A separate class because the aio Key Vault policy awaits `get_token_info` directly, while the
    synchronous clients call it without awaiting: no one method can be both.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, *, expires_on: int | None = None) -> None:
        super().__init__(token, FAR_FUTURE if expires_on is None else expires_on)

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """The static token, whatever the scopes."""
        return self._access_token(scopes, tenant_id)

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """The static token with its expiry, whatever the scopes."""
        return self._access_token_info(scopes, options)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> AsyncStaticTokenCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()
