"""`keyhealth serve`: the Functions app's work outside Functions, on aiohttp.web.

The poll runs on the Functions timer's NCRONTAB schedule (and once at start-up); Key Vault events arrive
over an Event Grid webhook (either schema, with both endpoint handshakes); status and health are served
as JSON. One process, one event loop; SIGINT/SIGTERM stop it gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from aiohttp import web

from monitor.app.delivery import DeliveryReport
from monitor.app.monitor import POLL_LEASE, POLL_LEASE_DURATION, POLL_LEASE_RENEW_EVERY, Monitor
from monitor.app.poll import PollResult, deliver_alerts, poll
from monitor.app.ports import BearerValidator
from monitor.app.state import Lease, PollMark
from monitor.app.status import status_document
from monitor.app.telemetry import TraceContextFilter
from monitor.domain.errors import SettingError, TokenError
from monitor.entry.config import SETTINGS, Settings
from monitor.entry.connections import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    LINGER,
    MAX_CONNECTIONS,
    CappedSite,
    QuietAccessLogger,
)
from monitor.entry.schedule import next_fire, parse_schedule, schedule_period
from monitor.entry.webhook import MAX_BODY, WebhookRoutes, json_response

log = logging.getLogger("keyhealth")

SECRET_HEADER = "x-keyhealth-key"  # noqa: S105 - the header's name, not a secret
HEALTHY_PERIODS = 2  # /healthz fails when no poll succeeded within this many schedule periods
HEALTH_CACHE_SECONDS = 5.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PollRecord:
    """How the last poll ended."""

    at: datetime
    outcome: str  # "ok", "skipped" (another instance holds the lease), "blind" (nothing listable) or "failed"
    error: str | None = None
    result: PollResult | None = None


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_credentials(settings: Settings, host: str, *, insecure_loopback: bool) -> None:
    """Refuse to serve without a credential unless a person asked for it by name, and only on loopback.

    Raises SettingError saying what to set.
    """
    if settings.webhook_secret or settings.auth_tenant_id:
        return
    if not insecure_loopback:
        raise SettingError(
            SETTINGS["webhook_secret"].name,
            "(empty)",
            f"keyhealth serve needs a credential: set it, or {SETTINGS['auth_tenant_id'].name} and "
            f"{SETTINGS['auth_audience'].name} for Entra ID tokens (or pass --insecure-loopback to serve "
            "without one on a loopback address)",
        )
    if not is_loopback(host):
        raise SettingError(
            SETTINGS["webhook_secret"].name,
            "(empty)",
            f"--insecure-loopback serves without credentials only on a loopback address, not {host!r}",
        )


class Server(WebhookRoutes):
    """The webhook, status and health routes and the poll loop around one Monitor."""

    def __init__(
        self,
        monitor: Monitor,
        *,
        schedule: str,
        secret: str | None = None,
        tokens: BearerValidator | None = None,
        open_access: bool = False,
        now: Callable[[], datetime] = _utc_now,
        tick: float = 1.0,
        delivery_schedule: str = "*/15 * * * * *",
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        try:
            self.schedule = parse_schedule(schedule)
        except ValueError as error:
            raise SettingError("KEYHEALTH_POLL_SCHEDULE", schedule, str(error)) from None
        try:
            self.delivery_schedule = parse_schedule(delivery_schedule)
        except ValueError as error:
            raise SettingError("KEYHEALTH_DELIVERY_SCHEDULE", delivery_schedule, str(error)) from None
        self._alerts_queued = asyncio.Event()  # a poll or event queued alerts: deliver now, not at the next tick
        self._delivery_task: asyncio.Task[None] | None = None
        self._delivery_lock = asyncio.Lock()
        self.deliveries: Counter[str] = Counter()  # alerts delivered, retried, undeliverable since start
        self.monitor = monitor
        self._secret = secret
        self._tokens = tokens
        # No credential at all: every route but /healthz is refused, unless a person asked for open access
        # (`--insecure-loopback`, and start() then binds only to loopback).
        self._open_access = open_access
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._max_connections = max_connections
        self._now = now
        self._tick = tick  # the loop looks at the clock at least this often (a test or demo clock may jump)
        self._poll_lock = asyncio.Lock()
        self._next_poll: datetime | None = None  # None: due now (start-up)
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.last_poll: PollRecord | None = None
        self._fleet_cache: tuple[float, PollMark | None, Lease | None] | None = None
        self.last_success: datetime | None = None
        self.started_at = now()
        self.events: Counter[str] = Counter()  # outcomes (and "rejected") since start
        self.refused: Counter[str] = Counter()  # whole requests refused since start, by HTTP status
        self.url: str | None = None
        self.app = self._make_app()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, now: Callable[[], datetime] = _utc_now, insecure_loopback: bool = False
    ) -> Server:
        """A server for a Monitor built from `settings`: their schedules, webhook secret and Entra ID tokens."""
        from monitor.entry.bootstrap import build_monitor, build_token_validator

        return cls(
            build_monitor(settings),
            schedule=settings.poll_schedule,
            secret=settings.webhook_secret,
            tokens=build_token_validator(settings),
            open_access=insecure_loopback and not (settings.webhook_secret or settings.auth_tenant_id),
            now=now,
            delivery_schedule=settings.delivery_schedule,
        )

    # --- the poll ---------------------------------------------------------------------------------------

    async def poll_if_due(self) -> PollRecord | None:
        """Run the poll when the schedule says so (always at start-up); returns its record, else None."""
        async with self._poll_lock:
            now = self._now()
            if self._next_poll is not None and now < self._next_poll:
                return None
            self._next_poll = next_fire(self.schedule, now)
            if self.last_poll is not None:
                # The last poll's report is released before the next is read: a poll never holds two fleets.
                self.last_poll = dataclasses.replace(self.last_poll, result=None)
            try:
                result = await poll(self.monitor, now=now)
            except Exception as error:  # a failed poll must not end the loop; /healthz reports it
                log.exception("keyhealth: the poll failed")
                record = PollRecord(now, "failed", f"{type(error).__name__}: {error}")
            else:
                fleet_blind = result.report.fleet_blind if result.report is not None else ()
                if fleet_blind:  # not even the namespaces could be listed: the monitor is blind, not fine
                    reasons = "; ".join(f"{spot.target}: {spot.reason}" for spot in fleet_blind)
                    record = PollRecord(now, "blind", f"could not list subscriptions: {reasons}", result=result)
                else:
                    record = PollRecord(now, "ok" if result.ran else "skipped", result=result)
                    self.last_success = now
                log.info("%s", result.describe())
                if result.alerts:
                    self._alerts_queued.set()
            self.last_poll = record
            self._fleet_cache = None  # the poll may have moved the mark: /healthz reads it afresh
            return record

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            await self.poll_if_due()
            wait = self._tick
            if self._next_poll is not None:
                wait = min(wait, max((self._next_poll - self._now()).total_seconds(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=max(wait, 0.01))

    # --- alert delivery: apart from the poll and the events, so a slow sink holds up neither ----------------

    async def deliver_now(self) -> DeliveryReport | None:
        """Send the queued alerts that are due; None when delivery itself failed (logged)."""
        try:
            async with self._delivery_lock:  # the loop and a caller (the demo) take turns, not the lease
                report = await deliver_alerts(self.monitor, now=self._now())
        except Exception:
            log.exception("keyhealth: alert delivery failed")
            return None
        self.deliveries.update(
            {"delivered": report.delivered, "retrying": report.retried, "undeliverable": report.abandoned}
        )
        if report.delivered or report.retried or report.abandoned:
            log.info("%s", report.describe())
        return report

    async def _delivery_loop(self) -> None:
        while not self._stopping.is_set():
            await self.deliver_now()
            wait = (next_fire(self.delivery_schedule, self._now()) - self._now()).total_seconds()
            woken = asyncio.ensure_future(self._alerts_queued.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait(
                {woken, stopping}, timeout=min(max(wait, 0.01), self._tick * 60), return_when=asyncio.FIRST_COMPLETED
            )
            woken.cancel()
            stopping.cancel()
            self._alerts_queued.clear()

    # --- HTTP -------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        for path in ("/api/events", "/events"):
            app.router.add_post(path, self.events_route)
            app.router.add_route("OPTIONS", path, self.options_route)
        for prefix in ("", "/api"):
            app.router.add_get(f"{prefix}/status", self.status_route)
            app.router.add_get(f"{prefix}/status/{{namespace}}", self.status_route)
        app.router.add_get("/healthz", self.healthz_route)
        app.router.add_get("/metrics", self.metrics_route)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Credentials on every route but /healthz: the shared secret or an Entra ID bearer token."""
        if request.path == "/healthz" or self._open_access:
            return await handler(request)
        refusal = await self._authenticate(request)
        if refusal is not None:
            headers = {"WWW-Authenticate": "Bearer"} if self._tokens is not None else None
            return self._refuse(request, 401, refusal, headers=headers)
        return await handler(request)

    async def _authenticate(self, request: web.Request) -> str | None:
        """None when the request carries a credential this server accepts, else why it is refused."""
        offered = request.query.get("code") or request.headers.get(SECRET_HEADER)
        if offered is not None and self._secret:
            if hmac.compare_digest(offered.encode("utf-8", "replace"), self._secret.encode()):
                return None
            return "the key offered (?code= or the x-keyhealth-key header) is not valid"
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if self._tokens is None:
                return "bearer tokens are not accepted: no Entra ID tenant is configured"
            try:
                await self._tokens.validate(token.strip())
            except TokenError as error:
                return error.reason
            return None
        accepted = [f"?code= or the {SECRET_HEADER} header"] if self._secret else []
        accepted += ["an Entra ID bearer token"] if self._tokens is not None else []
        if not accepted:
            return "this server has no credential configured, so it accepts no request"
        return f"a credential is required ({' or '.join(accepted)})"

    async def status_route(self, request: web.Request) -> web.Response:
        """GET /status and /status/{namespace}: the same JSON as the Functions status routes."""
        code, body = await status_document(self.monitor.store, request.match_info.get("namespace"))
        return json_response(code, body)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /healthz: 503 with the reasons when the monitor is not watching the fleet.

        This instance's last poll failed or was blind, or its poll loop has not run lately; no instance
        completed a poll within HEALTHY_PERIODS schedule periods (the store's mark, so a skipped poll is
        healthy only while another instance really polls); or the poll lease is held by an instance that
        stopped renewing it (a killed process keeps everybody else out until the lease expires).
        """
        now = self._now()
        window = schedule_period(self.schedule, now) * HEALTHY_PERIODS
        record = self.last_poll
        body: dict[str, Any] = {
            "last_poll": record.at.isoformat() if record else None,
            "outcome": record.outcome if record else None,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "next_poll": self._next_poll.isoformat() if self._next_poll else None,
            "events": dict(self.events),
            "refused": dict(self.refused),
            "alerts": dict(self.deliveries),
        }
        problems: list[str] = []
        if record is None:
            if now - self.started_at > window:
                problems.append("this instance has not run a poll since it started")
        elif record.outcome in {"failed", "blind"}:
            problems.append(f"the last poll was {record.outcome}: {record.error}")
        elif now - record.at > window:
            problems.append(f"this instance's poll loop has not run since {record.at.isoformat()}")
        if record is not None and record.error:
            body["error"] = record.error
        try:
            mark, lease = await self._fleet_poll_state()
        except Exception as error:  # the store is what every instance shares: not reading it is not healthy
            log.warning("keyhealth: /healthz could not read the state store: %s: %s", type(error).__name__, error)
            problems.append(f"could not read the state store: {type(error).__name__}")
            mark, lease = None, None
        else:
            body["last_complete_poll"] = {"at": mark.at.isoformat(), "by": mark.holder} if mark else None
            since = mark.at if mark is not None else self.started_at
            if now - since > window:
                what = f"since {mark.at.isoformat()} (by {mark.holder})" if mark else "since this instance started"
                problems.append(f"no instance completed a poll {what}")
            if lease is not None and lease.held_at(now):
                renewed = lease.expires_at - POLL_LEASE_DURATION
                body["poll_lease"] = {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()}
                if lease.holder != self.monitor.instance and now - renewed > POLL_LEASE_RENEW_EVERY * 2:
                    problems.append(
                        f"the poll lease holder {lease.holder} has not renewed it since {renewed.isoformat()}; "
                        f"no instance can poll until it expires at {lease.expires_at.isoformat()}"
                    )
        if problems:
            body["problems"] = problems
        body["healthy"] = not problems
        return (503 if problems else 200), body

    async def _fleet_poll_state(self) -> tuple[PollMark | None, Lease | None]:
        """The store's last-complete-poll mark and the poll lease, read at most every few seconds: /healthz is
        open to anyone and must not become a way to load the store."""
        cached = self._fleet_cache
        if cached is not None and time.monotonic() - cached[0] < HEALTH_CACHE_SECONDS:
            return cached[1], cached[2]
        mark = await self.monitor.store.last_poll_completed()
        lease = await self.monitor.store.get_lease(POLL_LEASE)
        self._fleet_cache = (time.monotonic(), mark, lease)
        return mark, lease

    async def metrics_route(self, request: web.Request) -> web.Response:
        """GET /metrics: every instrument in the Prometheus text format (for a scraper, behind the secret)."""
        body = prometheus_client.generate_latest()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def healthz_route(self, request: web.Request) -> web.Response:
        code, body = await self.health()
        return json_response(code, body)

    # --- lifetime ---------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Listen, then start the poll loop (its first poll runs at once). Returns the base URL."""
        if self._open_access and not is_loopback(host):
            raise SettingError(
                SETTINGS["webhook_secret"].name,
                "(empty)",
                f"serving without credentials only on loopback, not {host!r}",
            )
        if self._open_access:
            log.warning("keyhealth: serving WITHOUT credentials (--insecure-loopback): any local process can call it")
        self._runner = web.AppRunner(
            self.app,
            access_log_class=QuietAccessLogger,
            shutdown_timeout=30.0,
            # aiohttp also arms this at connect: a client that has not sent a whole request head by then is cut off.
            keepalive_timeout=self._header_timeout,
            lingering_time=LINGER,  # after an early answer (408, 413), drain what the client still sends this long
        )
        await self._runner.setup()
        site = CappedSite(self._runner, host, port, max_connections=self._max_connections, on_refused=self._count_busy)
        await site.start()
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        self.url = f"http://{host}:{bound}"
        self._loop_task = asyncio.get_running_loop().create_task(self._poll_loop())
        self._delivery_task = asyncio.get_running_loop().create_task(self._delivery_loop())
        return self.url

    def _count_busy(self) -> None:
        self.refused["503"] += 1
        if self.refused["503"] % 1000 == 1:  # a flood of refusals must not become a flood of log lines
            log.warning(
                "keyhealth: refused a connection: %d are open already (%d refused so far)",
                self._max_connections,
                self.refused["503"],
            )

    async def stop(self) -> None:
        """Stop accepting, let the running request and poll finish, then close the monitor."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listener, waits for handlers in flight
        if self._loop_task is not None:
            await self._loop_task  # the running poll finishes; the loop then sees it is stopping
        if self._delivery_task is not None:
            await self._delivery_task  # a drain in progress finishes; what is left stays queued
        if self.monitor.close is not None:
            await self.monitor.close()
        if self._tokens is not None:
            await self._tokens.close()

    async def run_until_signalled(self, host: str, port: int, announce: Callable[[str], None]) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            announce(await self.start(host, port))
            await stop.wait()
            log.info("keyhealth: stopping")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await self.stop()


def run_serve(
    settings: Settings, host: str, port: int, announce: Callable[[str], None], *, insecure_loopback: bool = False
) -> int:
    """`keyhealth serve`: build the Monitor from settings and serve until a signal. Returns 0.

    Raises SettingError for a schedule it cannot read, or when no credential is configured (unless
    `insecure_loopback` and `host` is a loopback address).
    """
    from monitor.entry.bootstrap import configure_telemetry

    try:
        parse_schedule(settings.poll_schedule)
    except ValueError as error:
        raise SettingError("KEYHEALTH_POLL_SCHEDULE", settings.poll_schedule, str(error)) from None
    require_credentials(settings, host, insecure_loopback=insecure_loopback)

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [trace %(trace_id)s] %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(TraceContextFilter())

    configure_telemetry(prometheus=True)

    async def main() -> None:
        server = Server.from_settings(settings, insecure_loopback=insecure_loopback)
        await server.run_until_signalled(host, port, announce)

    asyncio.run(main())
    return 0
