"""A fixed bearer token as an async Azure credential: for a local stand-in, where Entra ID cannot run."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

_ONE_DAY = 86400


class StaticTokenCredential:
    """Hands out the same token for every scope; never use it against Azure itself."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:  # the token is a secret
        return "StaticTokenCredential(***)"

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        del scopes, kwargs
        return AccessToken(self._token, int(time.time()) + _ONE_DAY)

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        del scopes, options
        return AccessTokenInfo(self._token, int(time.time()) + _ONE_DAY)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None
