"""Azure SDK clients built once per subscription or vault, with keyhealth's endpoints, retries and timeouts."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.keyvault.administration.aio import KeyVaultAccessControlClient
from azure.keyvault.keys.aio import KeyClient
from azure.mgmt.authorization.aio import AuthorizationManagementClient
from azure.mgmt.eventhub.aio import EventHubManagementClient
from azure.mgmt.keyvault.aio import KeyVaultManagementClient
from azure.mgmt.resource.subscriptions.aio import SubscriptionClient
from azure.mgmt.resourcegraph.aio import ResourceGraphClient
from azure.mgmt.servicebus.aio import ServiceBusManagementClient
from azure.monitor.query.aio import LogsQueryClient
from yarl import URL

from monitor.adapters.throttle import (
    GraphQuota,
    GraphQuotaPolicy,
    VaultRateLimiter,
    VaultThrottlePolicy,
    rbac_scope,
)
from monitor.app.telemetry import record_azure_request
from monitor.domain.model import vault_id

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_LOGS_ENDPOINT = "https://api.loganalytics.io"
# How long a Logs query asks the service to run at most (Prefer: wait=…), in seconds.
LOGS_SERVER_WAIT_SECONDS = 60
# The Log Analytics query API of each cloud (public, China, US Government).
LOGS_ENDPOINTS = frozenset({DEFAULT_LOGS_ENDPOINT, "https://api.loganalytics.azure.cn", "https://api.loganalytics.us"})
_MAX_REASON = 300

Client = TypeVar("Client")


@dataclass(frozen=True, slots=True)
class AzureOptions:
    """Where Azure is and how patiently to talk to it."""

    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    # Base under which vaults are reached by host name (a local stand-in); None: each vault's own URI.
    keyvault_endpoint: str | None = None
    ca_bundle: str | None = None
    retries: int = 3
    timeout_seconds: float = 30.0
    keyvault_share: float = 0.5  # of each vault's published request limit, for this monitor's reads

    def vault_url(self, vault_uri: str) -> str:
        """The URL a KeyClient uses for `vault_uri`."""
        if self.keyvault_endpoint is None:
            return vault_uri.strip().rstrip("/")
        host = urlsplit(vault_uri.strip()).hostname or vault_uri.strip().rstrip("/")
        return f"{self.keyvault_endpoint.rstrip('/')}/{host}"

    def client_kwargs(self, api: str | None = None) -> dict[str, Any]:
        """Transport settings every SDK client gets; with `api`, each attempt's latency is measured under it.

        azure-core's RetryPolicy honours Retry-After on 429 and 503 and backs off exponentially otherwise.
        """
        kwargs: dict[str, Any] = {
            "retry_total": self.retries,
            "retry_backoff_factor": 0.5,
            "retry_backoff_max": 30,
            "connection_timeout": min(self.timeout_seconds, 10.0),
            "read_timeout": self.timeout_seconds,
        }
        if self.ca_bundle:
            kwargs["connection_verify"] = self.ca_bundle
        if api is not None:
            kwargs["per_retry_policies"] = [RequestLatencyPolicy(api)]
        return kwargs


def json_body(response: AsyncHttpResponse, what: str) -> Any:
    """The JSON of a response read in full: sent with stream=True, so the pipeline's content policy did not
    decode it as well. Raises DecodeError naming `what` for a body that is not JSON."""
    try:
        return json.loads(response.content)
    except ValueError as error:
        raise DecodeError(f"unreadable {what}: {error}", response=response) from None


class EnvironmentProxyTransport(AioHttpTransport):  # type: ignore[misc]  # the SDK exports it lazily
    """azure-core's aiohttp transport, with the environment's proxy (HTTPS_PROXY, NO_PROXY, as aiohttp's
    trust_env reads them) looked up once an origin instead of on every request.

    A session that trusts the environment looks the proxy up, and reads ~/.netrc for credentials, on a worker
    thread for each request: two thread hops a key read, a tenth of a first poll's CPU. ~/.netrc gives only the
    proxy's credentials, never a request's: the pipeline sends its own Authorization, and aiohttp refuses both.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["use_env_settings"] = False  # the session this transport opens does not trust the environment
        super().__init__(**kwargs)
        self._proxies: dict[URL, tuple[URL, aiohttp.BasicAuth | None] | None] = {}

    async def send(self, request: Any, **config: Any) -> Any:
        if config.get("proxy") is None and not config.get("proxies"):
            url = URL(request.url)
            origin = url.origin()
            if origin not in self._proxies:
                self._proxies[origin] = await asyncio.to_thread(_environment_proxy, url)
            found = self._proxies[origin]
            if found is not None:
                config["proxy"] = str(found[0])
                if found[1] is not None:
                    config.setdefault("proxy_auth", found[1])
        return await super().send(request, **config)


def _environment_proxy(url: URL) -> tuple[URL, aiohttp.BasicAuth | None] | None:
    """The proxy the environment names for `url`, as aiohttp's trust_env finds it; None: connect directly."""
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None


class RequestLatencyPolicy(AsyncHTTPPolicy[HttpRequest, AsyncHttpResponse]):
    """Records each attempt's latency in keyhealth.azure.request.duration (api, method, status class)."""

    def __init__(self, api: str) -> None:
        super().__init__()
        self._api = api

    async def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[HttpRequest, AsyncHttpResponse]:
        started = time.monotonic()
        outcome = "error"  # no answer: connection failure or timeout
        try:
            response = await self.next.send(request)
            outcome = f"{response.http_response.status_code // 100}xx"
            return response
        finally:
            record_azure_request(self._api, request.http_request.method, outcome, time.monotonic() - started)


def describe_failure(error: BaseException) -> str:
    """A short, secret-free reason for a failed Azure call, for monitor-blind findings and logs."""
    if isinstance(error, DecodeError):  # a subclass of HttpResponseError, with a 200 status
        return _clip(f"unreadable response: {error.message}")
    if isinstance(error, HttpResponseError):
        status = error.status_code
        code = getattr(getattr(error, "error", None), "code", None) or getattr(error, "reason", None) or ""
        message = getattr(getattr(error, "error", None), "message", None) or ""
        text = f"HTTP {status} {code}".strip()
        if message:
            text += f": {message}"
        return _clip(text)
    if isinstance(error, ServiceResponseError | asyncio.TimeoutError | TimeoutError):
        return _clip(f"no response: {getattr(error, 'message', None) or type(error).__name__}")
    if isinstance(error, ServiceRequestError):
        return _clip(f"could not connect: {error.message}")
    if isinstance(error, AzureError):
        return _clip(f"{type(error).__name__}: {error.message}")
    return _clip(f"{type(error).__name__}: {error}")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class AzureClients:
    """Creates SDK clients lazily, reuses them, and closes them all at the end."""

    def __init__(self, credential: AsyncTokenCredential, options: AzureOptions) -> None:
        self.credential = credential
        self.options = options
        self._clients: dict[tuple[str, str], Any] = {}
        self.limiter = VaultRateLimiter(options.keyvault_share)
        self.graph_quota = GraphQuota()
        self._session: aiohttp.ClientSession | None = None

    def _kwargs(self, api: str) -> dict[str, Any]:
        """client_kwargs, every client on one aiohttp session: one connection pool, reused across clients.

        With a CA bundle given as a path, azure-core builds an SSL context per request, which defeats
        connection reuse (a TLS handshake per request); one context on the shared connector keeps it.
        """
        kwargs = self.options.client_kwargs(api)
        kwargs.pop("connection_verify", None)
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=self.options.ca_bundle) if self.options.ca_bundle else True
            )
            # No pool limit of its own: the scan's concurrency bound and the vault limiter decide.
            connector = aiohttp.TCPConnector(ssl=ssl_context, limit=0)
            # The environment's proxy is applied by the transport, once an origin (EnvironmentProxyTransport).
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        kwargs["transport"] = EnvironmentProxyTransport(
            session=self._session,
            session_owner=False,
            connection_timeout=kwargs.pop("connection_timeout"),
            read_timeout=kwargs.pop("read_timeout"),
        )
        return kwargs

    def _cached(self, kind: str, scope: str, build: Callable[[], Client]) -> Client:
        key = (kind, scope.lower())
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = build()
        return client

    def key_client(self, vault_uri: str) -> KeyClient:
        # The stand-in answers the Key Vault challenge for vault.azure.net from a loopback host.
        verify_resource = self.options.keyvault_endpoint is None
        vault = vault_id(vault_uri)

        def build() -> KeyClient:
            kwargs = self._kwargs("keyvault")
            # Paced before the latency is measured: time spent waiting for the vault's share is not the vault's.
            kwargs["per_retry_policies"] = [VaultThrottlePolicy(self.limiter, vault), *kwargs["per_retry_policies"]]
            return KeyClient(
                self.options.vault_url(vault_uri), self.credential, verify_challenge_resource=verify_resource, **kwargs
            )

        return self._cached("keyvault", vault, build)

    def access_control(self, hsm_uri: str) -> KeyVaultAccessControlClient:
        """A Managed HSM's local RBAC (role assignments and definitions), paced by the HSM's role-management
        limit, apart from its key reads."""
        verify_resource = self.options.keyvault_endpoint is None
        vault = vault_id(hsm_uri)

        def build() -> KeyVaultAccessControlClient:
            kwargs = self._kwargs("keyvault.rbac")
            kwargs["per_retry_policies"] = [
                VaultThrottlePolicy(self.limiter, rbac_scope(vault)),
                *kwargs["per_retry_policies"],
            ]
            return KeyVaultAccessControlClient(
                self.options.vault_url(hsm_uri), self.credential, verify_challenge_resource=verify_resource, **kwargs
            )

        return self._cached("keyvault-rbac", vault, build)

    def servicebus(self, subscription: str) -> ServiceBusManagementClient:
        return self._cached(
            "servicebus",
            subscription,
            lambda: ServiceBusManagementClient(
                self.credential,
                subscription,
                base_url=self.options.arm_endpoint,
                **self._kwargs("arm.servicebus"),
            ),
        )

    def eventhub(self, subscription: str) -> EventHubManagementClient:
        return self._cached(
            "eventhub",
            subscription,
            lambda: EventHubManagementClient(
                self.credential,
                subscription,
                base_url=self.options.arm_endpoint,
                **self._kwargs("arm.eventhub"),
            ),
        )

    def keyvault_mgmt(self, subscription: str) -> KeyVaultManagementClient:
        return self._cached(
            "keyvault-mgmt",
            subscription,
            lambda: KeyVaultManagementClient(
                self.credential,
                subscription,
                base_url=self.options.arm_endpoint,
                **self._kwargs("arm.keyvault"),
            ),
        )

    def authorization(self, subscription: str) -> AuthorizationManagementClient:
        return self._cached(
            "authorization",
            subscription,
            lambda: AuthorizationManagementClient(
                self.credential,
                subscription,
                base_url=self.options.arm_endpoint,
                **self._kwargs("arm.authorization"),
            ),
        )

    def logs_query(self, endpoint: str = DEFAULT_LOGS_ENDPOINT) -> LogsQueryClient:
        """The Log Analytics query API (the vaults' audit logs). A cloud's own endpoint is its tokens' audience;
        a stand-in's asks for the public cloud's (the SDK would ask for the stand-in's URL)."""

        def build() -> LogsQueryClient:
            kwargs = self._kwargs("loganalytics")
            # A query may run for as long as it asked the service to wait (Prefer: wait): reading its answer
            # must not give up first.
            transport = kwargs["transport"]
            transport.connection_config.read_timeout = max(
                transport.connection_config.read_timeout, LOGS_SERVER_WAIT_SECONDS + 15
            )
            if endpoint.rstrip("/") not in LOGS_ENDPOINTS:
                kwargs["audience"] = DEFAULT_LOGS_ENDPOINT
            return LogsQueryClient(self.credential, endpoint=endpoint.rstrip("/"), **kwargs)

        return self._cached("loganalytics", endpoint, build)

    def resource_graph(self) -> ResourceGraphClient:
        def build() -> ResourceGraphClient:
            kwargs = self._kwargs("arm.resourcegraph")
            kwargs["per_retry_policies"] = [GraphQuotaPolicy(self.graph_quota), *kwargs["per_retry_policies"]]
            return ResourceGraphClient(self.credential, base_url=self.options.arm_endpoint, **kwargs)

        return self._cached("resourcegraph", "", build)

    def subscriptions(self) -> SubscriptionClient:
        return self._cached(
            "subscriptions",
            "",
            lambda: SubscriptionClient(
                self.credential, base_url=self.options.arm_endpoint, **self._kwargs("arm.subscriptions")
            ),
        )

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
