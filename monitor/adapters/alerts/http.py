"""One HTTPS client for the webhook-style sinks, and the rules that turn an answer into DeliveryError.

Reasons never carry the URL (Teams and Slack URLs are secrets) and are scrubbed of the sink's secrets.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from monitor.domain.alert import Alert
from monitor.domain.errors import DeliveryError

USER_AGENT = "keyhealth-alerts/0.1"
_REJECTED = {400, 413, 422}  # the sink refused this alert's content: sending it again cannot help
_MAX_BODY_IN_REASON = 160


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret replaced by ***; of a URL also its path and query, where webhook tokens
    live (Slack puts them in the path, Teams Workflows in a `sig` query parameter)."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "***")
        parts = urlsplit(secret)
        pieces = [parts.query, *(value for _, _, value in (p.partition("=") for p in parts.query.split("&")))]
        if len(parts.path) > 1:
            pieces.append(parts.path)
        for piece in sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True):
            text = text.replace(piece, "***")
    return text


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the back-off applies


class HttpPoster:
    """POSTs for every HTTP sink through one aiohttp session, made in the running loop on first use."""

    def __init__(self, *, ca_bundle: str | None = None) -> None:
        self._ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = ssl.create_default_context(cafile=self._ca_bundle) if self._ca_bundle else None
            connector = aiohttp.TCPConnector(ssl=context) if context is not None else aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        return self._session

    async def post(
        self,
        sink: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float = 10.0,
        secrets: Iterable[str | None] = (),
    ) -> str:
        """POST `body`; returns the answer's text on a 2xx. Raises DeliveryError otherwise."""
        secrets = (url, *secrets)
        try:
            async with self._client().post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,  # a redirect would carry the body (and a signature) somewhere unasked
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
                retry_after = _retry_after(response.headers)
        except TimeoutError:
            raise DeliveryError(sink, f"no answer within {timeout:g} s") from None
        except aiohttp.ClientSSLError as error:
            raise DeliveryError(sink, f"TLS failed ({type(error).__name__})") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as error:
            raise DeliveryError(sink, f"could not deliver ({type(error).__name__})") from None
        if 200 <= status < 300:
            return text
        detail = scrub(" ".join(text.split())[:_MAX_BODY_IN_REASON], secrets)
        reason = f"HTTP {status}" + (f": {detail}" if detail else "")
        raise DeliveryError(sink, reason, retryable=status not in _REJECTED, retry_after=retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class JsonWebhookSink:
    """A sink that POSTs one JSON document to a URL that is itself the secret (Teams, Slack)."""

    kind = "json"

    def __init__(self, name: str, url: str, poster: HttpPoster, *, timeout: float = 10.0) -> None:
        self.name = name
        self._url = url
        self._poster = poster
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"  # never the URL

    def message(self, alert: Alert, now: datetime) -> dict[str, Any]:
        """The JSON body for `alert`, worded as of `now`."""
        raise NotImplementedError

    async def send(self, alert: Alert, *, now: datetime) -> None:
        body = json.dumps(self.message(alert, now), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        await self._poster.post(self.name, self._url, body, headers, timeout=self._timeout)

    async def close(self) -> None:
        """The shared poster is closed by whoever made it."""
