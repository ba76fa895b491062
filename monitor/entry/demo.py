"""`keyhealth demo`: the stand-in serves a bundled fleet, `check` reads it over HTTPS, then the timeline plays."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from monitor.domain.documents import format_instant, parse_instant
from monitor.domain.findings import humanize
from monitor.domain.fleet import FleetReport
from monitor.domain.model import (
    Scenario,
)
from monitor.domain.timeline import describe_change
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.entry.serve import SECRET_HEADER, Server
from monitor.formats.render import render_table
from monitor.formats.scenario_io import load_scenario
from monitor.sandbox import Sandbox

DEMO_FLEET = "demo-fleet.json"


def bundled_fleet() -> Path:
    """The demo's scenario file, shipped inside the package."""
    return Path(str(resources.files("monitor.data").joinpath(DEMO_FLEET)))


@dataclass(frozen=True, slots=True)
class _Row:
    status: str
    earliest: str | None
    worst: str | None
    top: str  # "; <severity> <code>" of the worst finding, or ""


def _row(document: Mapping[str, Any]) -> _Row:
    findings = document.get("findings") or []
    top = findings[0] if findings else None
    detail = f"; {top['severity']} {top['code']}" if top else ""
    return _Row(document["status_now"], document.get("revoked_at_earliest"), top["severity"] if top else None, detail)


async def _status_rows(session: aiohttp.ClientSession, serve_url: str, secret: str) -> dict[str, _Row]:
    """Every namespace's last judgement, as `GET /status` of `keyhealth serve` reports it."""
    async with session.get(f"{serve_url}/status", headers={SECRET_HEADER: secret}) as reply:
        reply.raise_for_status()
        body = await reply.json()
    return {document["name"]: _row(document) for document in body["namespaces"]}


class _OnCallWebhook:
    """The on-call team's webhook for the demo: a real local HTTP endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.pages: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _take(self, request: web.Request) -> web.Response:
        self.pages.append(await request.json())
        return web.Response(status=204)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/oncall", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/oncall"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def take_new(self, seen: int) -> list[dict[str, Any]]:
        return self.pages[seen:]


def _steps(scenario: Scenario) -> list[datetime]:
    """The instants worth stopping at: just after each future change."""
    return sorted({c.at for c in scenario.changes if c.at > scenario.now})


def run_demo(
    stdout: TextIO,
    *,
    scenario_path: Path | None = None,
    pace: float = 1.0,
    colour: bool = False,
    width: int = 100,
    steps: int | None = None,
) -> int:
    """Serve the fleet, run `serve` against it, then step the stand-in's clock through the timeline.

    Returns 0: the demo shows problems, it does not have them. Raises ScenarioError for a bad file.
    """
    path = scenario_path or bundled_fleet()
    scenario, _ = load_scenario(path)
    plan = _steps(scenario)[:steps] if steps is not None else _steps(scenario)
    with tempfile.TemporaryDirectory(prefix="keyhealth-demo-") as state_dir:
        asyncio.run(_demo(stdout, scenario, path, plan, pace, colour, width, Path(state_dir)))
    return 0


async def _demo(
    stdout: TextIO,
    scenario: Scenario,
    path: Path,
    plan: list[datetime],
    pace: float,
    colour: bool,
    width: int,
    state_dir: Path,
) -> None:
    oncall = _OnCallWebhook()
    # The demo prints each page as the on-call webhook receives it; the log sink's lines would repeat them.
    quiet = logging.NullHandler()
    alert_log = logging.getLogger("keyhealth.alerts")
    alert_log.addHandler(quiet)
    alert_log.propagate = False
    async with Sandbox(scenario) as sandbox:
        environment = {
            **sandbox.environment(),
            "KEYHEALTH_SQLITE_PATH": str(state_dir / "state.sqlite"),
            "KEYHEALTH_ALERTS": json.dumps({"sinks": {"oncall": {"type": "webhook", "url": await oncall.start()}}}),
            # The stand-in's Service Bus polls each namespace's keys; its vaults' audit logs show those calls.
            "KEYHEALTH_AUDIT_LOGS": "on",
        }
        settings = Settings.from_environment(environment)
        # The demo drives the poll itself as the stand-in's clock jumps (tick: the loop never wakes on its own).
        # Like a deployment, the demo's server takes no request without a credential: a one-off secret.
        secret = secrets.token_urlsafe(32)
        server = Server(
            build_monitor(settings), schedule=settings.poll_schedule, secret=secret, now=sandbox.clock.now, tick=3600
        )
        serve_url = await server.start("127.0.0.1", 0)
        try:
            print(f"keyhealth demo: a local Azure stand-in serves {path.name} at {sandbox.url}", file=stdout)
            print(
                "the real Azure SDK clients read it over HTTPS (ARM + Key Vault), exactly as `keyhealth check` "
                "reads a subscription",
                file=stdout,
            )
            print(
                f"`keyhealth serve` runs at {serve_url}: it polls on its schedule and the stand-in delivers "
                "its Key Vault events to /api/events\n",
                file=stdout,
            )
            await server.poll_if_due()  # the start-up poll
            first = server.last_poll
            if first is None or first.result is None or first.result.report is None:
                raise RuntimeError(f"the start-up poll did not run: {first.error if first else 'no poll'}")
            stdout.write(render_table(first.result.report, colour=colour, width=width))
            _print_observed(stdout, first.result.report, sandbox.clock.now())
            await server.deliver_now()
            paged = _print_pages(stdout, oncall, 0, sandbox.clock.now())
            subscription = await sandbox.deliver_events_to_async(f"{serve_url}/api/events?code={secret}", "eventgrid")
            async with aiohttp.ClientSession() as session:
                previous = await _status_rows(session, serve_url, secret)
                seen = 0
                for instant in plan:
                    if pace:
                        await asyncio.sleep(pace)
                    sandbox.clock.set(instant + timedelta(seconds=1))
                    now = sandbox.clock.now()
                    happened = [c for c in scenario.changes if c.at == instant]
                    later = humanize(now - scenario.now).removeprefix("in ")
                    print(f"\n== {format_instant(now)} ({later} later)", file=stdout)
                    for change in happened:
                        print(f"   {describe_change(change)}", file=stdout)
                    await sandbox.flush_events_async()  # Event Grid -> POST /api/events -> re-evaluated
                    deliveries = subscription.deliveries
                    for delivery in deliveries[seen:]:
                        kind = delivery.event.type.rsplit(".", 1)[-1]
                        answer = "accepted" if delivery.delivered else f"not accepted ({delivery.error})"
                        print(f"   event {kind} ({delivery.event.subject}) delivered: {answer}", file=stdout)
                    seen = len(deliveries)
                    await server.poll_if_due()  # the scheduled poll the clock has passed
                    current = await _status_rows(session, serve_url, secret)
                    _print_differences(stdout, previous, current, now)
                    previous = current
                    await server.deliver_now()
                    paged = _print_pages(stdout, oncall, paged, now)
        finally:
            await server.stop()
            await oncall.stop()
            alert_log.removeHandler(quiet)
            alert_log.propagate = True
    print(
        "\nThat was the timeline. Next: `keyhealth sandbox FILE` serves your own scenario; "
        "`keyhealth serve` watches a real subscription.",
        file=stdout,
    )


def _print_observed(stdout: TextIO, report: FleetReport, now: datetime) -> None:
    """Each namespace's next poll by the service, as its own key calls in the vaults' audit logs show it."""
    print("\nthe services' own polls, read from the vaults' audit logs (Log Analytics query API):", file=stdout)
    for namespace_report in report.namespaces:
        namespace = namespace_report.prediction.namespace
        observation = namespace_report.prediction.observation
        if observation is None:
            continue
        if not observation.known:
            print(f"   {namespace.name:<14} unknown: {observation.unobserved}", file=stdout)
        elif observation.phase is not None and observation.phase.known:
            at = format_instant(observation.phase.next_poll(now))
            print(
                f"   {namespace.name:<14} next poll at {at} (phase from {observation.phase.polls} polls)", file=stdout
            )
        else:
            print(f"   {namespace.name:<14} phase not known yet ({observation.polls_seen} poll(s) seen)", file=stdout)


def _print_pages(stdout: TextIO, oncall: _OnCallWebhook, seen: int, now: datetime) -> int:
    """Print the pages the on-call webhook received since `seen`; returns how many it has now."""
    for page in oncall.take_new(seen):
        print(f"   page -> on-call webhook: {page['headline']}", file=stdout)
    return len(oncall.pages)


def _print_differences(stdout: TextIO, previous: dict[str, _Row], current: dict[str, _Row], now: datetime) -> None:
    changed = [name for name, row in current.items() if previous.get(name) != row]
    if not changed:
        print("   no namespace's prediction changed", file=stdout)
        return
    for name in changed:
        before, after = previous.get(name), current[name]
        window = "no revocation predicted"
        if after.earliest is not None:
            earliest = parse_instant(after.earliest, "revoked_at_earliest")
            window = f"revoked from {format_instant(earliest)} ({humanize(earliest - now)})"
        status = after.status
        if before is not None and before.status != after.status:
            status = f"{before.status} -> {after.status}"
        print(f"   {name:<14} {status:<20} {window}{after.top}", file=stdout)
