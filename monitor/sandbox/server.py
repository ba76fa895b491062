"""The sandbox: one HTTPS server on 127.0.0.1 serving ARM at the root and Key Vault under /keyvault/<host>/.

Every request is judged at the sandbox clock's instant: a Key Vault request for a vault that does not
exist then has its connection reset (as DNS fails for a deleted vault); a request without a bearer
token gets the service's 401 (Key Vault's carries its challenge); then fault rules, the per-vault rate
limit and finally the API modules answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from monitor.domain.errors import SandboxError, SandboxNotRunningError
from monitor.domain.model import Change, Scenario
from monitor.sandbox.arm_api import DEFAULT_PAGE_SIZE, ArmApi
from monitor.sandbox.certs import Certificates
from monitor.sandbox.clock import SandboxClock
from monitor.sandbox.credentials import DEFAULT_TOKEN
from monitor.sandbox.events import EventPlanner, EventSubscription, Schema
from monitor.sandbox.faults import KEYVAULT_RATE_LIMIT, Faults, RateLimit
from monitor.sandbox.keymaterial import KeyMaterial
from monitor.sandbox.keyvault_api import MAX_PAGE_SIZE, KeyVaultApi
from monitor.sandbox.logs_api import LogsApi
from monitor.sandbox.rbac import Rbac
from monitor.sandbox.requestlog import RequestLog
from monitor.sandbox.resources import NAMESPACE_TYPE
from monitor.sandbox.routing import SandboxRequests
from monitor.sandbox.servicebus_polls import DEFAULT_HISTORY, DEFAULT_INGESTION, ServiceBusPolls
from monitor.sandbox.state import DEFAULT_TENANT, SandboxState, VaultInfo

T = TypeVar("T")
_STARTUP_TIMEOUT = 30.0


class Sandbox(SandboxRequests):
    """A local stand-in for ARM and Key Vault, serving a Scenario's World at a movable clock's instant.

    Use it as a context manager (`with Sandbox(scenario) as sandbox:`) to run the server on a
    background thread with its own event loop, or `async with` to run it on the current loop.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock_start: datetime | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 0.0,
        tenant_id: str = DEFAULT_TENANT,
        arm_page_size: int = DEFAULT_PAGE_SIZE,
        keyvault_page_size: int = MAX_PAGE_SIZE,
        rate_limit: RateLimit | None = KEYVAULT_RATE_LIMIT,
        key_pool: int | None = None,
        ca_dir: Path | None = None,
        token: str = DEFAULT_TOKEN,
        audit_history: timedelta = DEFAULT_HISTORY,
        audit_ingestion: timedelta = DEFAULT_INGESTION,
    ) -> None:
        self.scenario = scenario
        self.clock = SandboxClock(clock_start or scenario.now, speed=speed)
        self.state = SandboxState(scenario, tenant_id=tenant_id)
        self.faults = Faults(rate_limit=rate_limit)
        self.requests = RequestLog()
        self.token = token  # what the printed environment tells clients to send; any bearer token is accepted
        self._host = host
        self._port = port
        self._keyvault = KeyVaultApi(self.state, KeyMaterial(pool_size=key_pool), page_size=keyvault_page_size)
        self.rbac = Rbac(self.state)
        self._arm = ArmApi(self.state, self.rbac, page_size=arm_page_size)
        # Service Bus's own polls of its keys, and the audit logs and Logs query API that show them.
        self.polls = ServiceBusPolls(self.state, self.clock.now, history=audit_history, ingestion=audit_ingestion)
        self.logs = LogsApi(self.state, self.polls)
        self.logs.add_routes(self._arm.router)
        self._ca_dir = ca_dir
        self._own_ca_dir: Path | None = None  # the temporary directory made for the CA, removed on stop
        self._certificates: Certificates | None = None
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._subscriptions: list[EventSubscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # --- what clients need ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """https://127.0.0.1:PORT, the ARM base_url (Key Vault is under /keyvault/<host>).

        Raises SandboxNotRunningError before the server has started.
        """
        if self._url is None:
            raise SandboxNotRunningError("the sandbox has not started: use it in a with block, or call start()")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ca_path(self) -> Path:
        """The PEM of the CA that signed the server's certificate: pass it as `connection_verify`."""
        return self._certs().ca_path

    @property
    def keyvault_endpoint(self) -> str:
        return f"{self.url}/keyvault"

    @property
    def logs_endpoint(self) -> str:
        """The Log Analytics query API's base URL (LogsQueryClient's `endpoint`)."""
        return f"{self.url}/loganalytics"

    def keyvault_url(self, vault: str) -> str:
        """The vault_url a KeyClient needs for `vault` (its URI, host or name).

        Raises UnknownVaultError when the scenario has no such vault.
        """
        return f"{self.keyvault_endpoint}/{self.state.vault(vault).host}"

    def vault_resource_id(self, uri: str) -> str:
        """The ARM resource id of the vault at `uri`.

        Raises UnknownVaultError when the scenario has no such vault.
        """
        return self.state.vault(uri).resource_id

    def vault_info(self, uri: str) -> VaultInfo:
        return self.state.vault(uri)

    def environment(self) -> dict[str, str]:
        """The settings a keyhealth client needs to use this sandbox instead of Azure."""
        return {
            "KEYHEALTH_ARM_ENDPOINT": self.url,
            "KEYHEALTH_KEYVAULT_ENDPOINT": self.keyvault_endpoint,
            "KEYHEALTH_CA_BUNDLE": str(self.ca_path),
            "KEYHEALTH_STATIC_TOKEN": self.token,
            "KEYHEALTH_LOGS_ENDPOINT": self.logs_endpoint,
        }

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server TLS context signed by the sandbox CA, for a test's own HTTPS receiver."""
        return self._certs().server_context()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the sandbox CA."""
        return self._certs().client_context()

    # --- changing the world ---------------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Append a change to the timeline (as an API call would).

        Raises ChangeRejectedError when it cannot apply.
        """
        self.state.apply(change)

    def add_namespace(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Add a raw namespace document (Standard tier, Premium without CMK, ...) for filters to skip.

        Fills `name` and `type` from the id when missing; returns the stored copy.
        Raises ValueError when it has no `id`.
        """
        stored = copy.deepcopy(dict(document))
        resource_id = stored.get("id")
        if not isinstance(resource_id, str) or not resource_id.strip("/"):
            raise ValueError("a namespace document needs its ARM resource id in 'id'")
        stored.setdefault("name", resource_id.rstrip("/").rsplit("/", 1)[-1])
        stored.setdefault("type", NAMESPACE_TYPE)
        self.state.put_namespace(stored)
        return copy.deepcopy(stored)

    def namespace(self, resource_id: str) -> dict[str, Any] | None:
        """The namespace document as ARM would return it now, or None."""
        found = self.state.namespace(resource_id)
        return copy.deepcopy(found) if found is not None else None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the server on a background thread with its own event loop; returns self.

        Raises SandboxError when already started, OSError when the port cannot be bound.
        """
        self._claim_start()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="keyhealth-sandbox", daemon=True)
        self._thread.start()
        if not ready.wait(_STARTUP_TIMEOUT):
            raise SandboxError("the sandbox server did not start in time")
        if failure:
            self._thread.join()
            self._thread = None
            self._cleanup_files()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the server (hanging requests end, event delivery stops) and remove the temporary CA files."""
        thread, loop = self._thread, self._loop
        if thread is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                asyncio.run_coroutine_threadsafe(self._stop_server(), loop).result(_STARTUP_TIMEOUT)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(_STARTUP_TIMEOUT)
            self._thread = None
        self._cleanup_files()

    async def start_async(self) -> Sandbox:
        """Start the server on the running event loop; returns self.

        Raises SandboxError when already started, OSError when the port cannot be bound.
        """
        self._claim_start()
        self._loop = asyncio.get_running_loop()
        await self._start_server()
        return self

    async def stop_async(self) -> None:
        """Stop a server started with `start_async`."""
        await self._stop_server()
        self._cleanup_files()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Sandbox:
        return await self.start_async()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop_async()

    def _claim_start(self) -> None:
        if self._started:
            raise SandboxError("a Sandbox starts once; make a new one")
        self._started = True

    def _certs(self) -> Certificates:
        """The CA and server certificate, made on first use (so an unused Sandbox leaves no files)."""
        if self._certificates is None:
            directory = self._ca_dir
            if directory is None:
                directory = self._own_ca_dir = Path(tempfile.mkdtemp(prefix="keyhealth-sandbox-"))
            self._certificates = Certificates(directory)
        return self._certificates

    def _cleanup_files(self) -> None:
        if self._own_ca_dir is not None:
            shutil.rmtree(self._own_ca_dir, ignore_errors=True)

    async def _start_server(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
            sock.listen(512)
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        site = web.SockSite(self._runner, sock, ssl_context=self._certs().server_context())
        await site.start()
        self._url = f"https://{self._host}:{sock.getsockname()[1]}"
        self.clock.subscribe(self._on_clock)
        self.state.subscribe(self._on_change)
        if self.clock.speed:
            self._tasks.append(asyncio.get_running_loop().create_task(self._tick()))

    async def _stop_server(self) -> None:
        self.clock.unsubscribe(self._on_clock)
        if self._stopping is not None:
            self._stopping.set()  # ends hanging requests
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.sleep(0.01)  # closed transports release their sockets on the next loop turns

    # --- running code on the server's loop ------------------------------------------------------------

    def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        """Run a coroutine on the server's loop from another thread and wait for it."""
        loop = self._loop
        if loop is None or self._url is None:
            raise SandboxNotRunningError("the sandbox is not running")
        if self._thread is None or threading.current_thread() is self._thread:
            raise SandboxError("on the sandbox's own loop, use the *_async method instead")
        return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout)

    def _schedule_planning(self) -> None:
        loop = self._loop
        if loop is not None and self._subscriptions and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._plan)

    def _on_clock(self, now: datetime) -> None:
        self._schedule_planning()

    def _on_change(self, change: Change) -> None:
        self._schedule_planning()

    def _plan(self) -> None:
        now = self.clock.now()
        for subscription in self._subscriptions:
            subscription.plan(now)

    async def _tick(self) -> None:
        """With a running clock, plan events twice a second as it passes their instants."""
        while True:
            await asyncio.sleep(0.5)
            self._plan()

    # --- events ---------------------------------------------------------------------------------------

    def deliver_events_to(
        self,
        url: str,
        schema: Schema = "eventgrid",
        *,
        ssl_context: ssl.SSLContext | bool | None = None,
        attempts: int = 3,
        backoff: float = 0.1,
        timeout: float = 10.0,
        handshake: bool = False,
    ) -> EventSubscription:
        """POST the Key Vault events the timeline implies to `url` from now on, as the clock passes them.

        `ssl_context` defaults to one trusting the system CAs and the sandbox CA; `handshake` first
        proves the endpoint (SubscriptionValidationEvent, or the CloudEvents OPTIONS request).
        Raises SandboxNotRunningError when the server is not running, ValueError for a bad schema.
        """
        return self._on_loop(
            lambda: self.deliver_events_to_async(
                url,
                schema,
                ssl_context=ssl_context,
                attempts=attempts,
                backoff=backoff,
                timeout=timeout,
                handshake=handshake,
            ),
            _STARTUP_TIMEOUT,
        )

    async def deliver_events_to_async(
        self,
        url: str,
        schema: Schema = "eventgrid",
        *,
        ssl_context: ssl.SSLContext | bool | None = None,
        attempts: int = 3,
        backoff: float = 0.1,
        timeout: float = 10.0,
        handshake: bool = False,
    ) -> EventSubscription:
        """`deliver_events_to` on the sandbox's own loop."""
        subscription = EventSubscription(
            url,
            schema,
            EventPlanner(self.state, self.clock.now()),
            ssl_context=self._certs().client_context() if ssl_context is None else ssl_context,
            attempts=attempts,
            backoff=backoff,
            timeout=timeout,
            handshake=handshake,
        )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._subscriptions.append(subscription)
        self._tasks.append(asyncio.get_running_loop().create_task(subscription.run(self._session)))
        return subscription

    def flush_events(self, timeout: float = 30.0) -> None:
        """Wait until every event due at the clock's instant has been delivered (or given up on).

        Raises SandboxNotRunningError when the server is not running, TimeoutError when it takes longer.
        """
        self._on_loop(self.flush_events_async, timeout)

    async def flush_events_async(self) -> None:
        """`flush_events` on the sandbox's own loop."""
        self._plan()
        await asyncio.gather(*(subscription.queue.join() for subscription in self._subscriptions))
