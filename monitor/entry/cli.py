"""The `keyhealth` command line: parses arguments, wires the parts, maps outcomes to exit statuses."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from monitor import __version__
from monitor.domain.documents import parse_instant
from monitor.domain.errors import KeyhealthError, ScenarioError
from monitor.domain.findings import Severity
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.model import Scenario
from monitor.entry.config import Settings
from monitor.entry.runtime import batch_gc
from monitor.formats.render import prediction_document, render_table
from monitor.formats.scenario_io import load_scenario

EXIT_HEALTHY = 0
EXIT_WARNING = 1
EXIT_INVALID = 2
EXIT_CRITICAL = 3

EXIT_STATUS_HELP = """\
exit status:
  0  every namespace healthy (info findings at most)
  1  some warning
  2  invalid input (the message names the file, the JSON path and the problem)
  3  some namespace critical or revoked
"""


def exit_status(report: FleetReport) -> int:
    """Map a fleet's verdict to the documented exit status."""
    verdict = report.verdict
    if verdict is Severity.CRITICAL:
        return EXIT_CRITICAL
    if verdict is Severity.WARNING:
        return EXIT_WARNING
    return EXIT_HEALTHY


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyhealth",
        description="Predicts when Service Bus namespaces encrypted with customer-managed keys would go Revoked.",
    )
    parser.add_argument("--version", action="version", version=f"keyhealth {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate = commands.add_parser(
        "simulate",
        help="predict revocation for a scenario file, offline",
        description="Predict, per namespace of a scenario file, when it would go Revoked and why.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("file", type=Path, help="scenario file (JSON, or YAML if it ends in .yaml/.yml)")
    simulate.add_argument("--at", metavar="DATE", help="judge as if now were DATE (what-if); ISO 8601, UTC")
    simulate.add_argument(
        "--horizon", metavar="DATE", help="predict up to DATE (default: the file's, else now + 1 year)"
    )
    _add_output_options(simulate)

    check = commands.add_parser(
        "check",
        help="scan the live fleet once (Azure, or a local stand-in) and predict",
        description=(
            "Read every Premium Service Bus namespace encrypted with Key Vault keys, the keys and who may use "
            "them, then predict as simulate does. What the monitor cannot read makes namespaces unknown."
        ),
        epilog=EXIT_STATUS_HELP + "  (an unknown namespace counts as critical)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--subscription",
        action="append",
        metavar="ID",
        help="subscription to scan (repeatable; default: KEYHEALTH_SUBSCRIPTIONS, else all the identity can see)",
    )
    check.add_argument("--save", type=Path, metavar="FILE", help="also write what was read as a scenario file")
    check.add_argument(
        "--at", metavar="DATE", help="predict as if now were DATE (default: the current time); ISO 8601, UTC"
    )
    check.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    _add_output_options(check)

    demo = commands.add_parser(
        "demo",
        help="run the whole job on a built-in fleet: stand-in over HTTPS, check, then the timeline",
        description=(
            "Start the local Azure stand-in with a bundled fleet, read it with the real Azure SDK clients as "
            "`check` does, then move its clock through the fleet's timeline and show the predictions change."
        ),
    )
    demo.add_argument("--scenario", type=Path, help="serve this scenario instead of the bundled fleet")
    demo.add_argument(
        "--pace", type=float, help="seconds to pause between timeline steps (default: 1 on a terminal, else 0)"
    )
    demo.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the table")
    demo.add_argument(
        "--metrics", action="store_true", help="print the metrics the run emitted (as an exporter would see them)"
    )

    serve = commands.add_parser(
        "serve",
        help="run the monitor as a web service: the scheduled poll, the Event Grid webhook, status and health",
        description=(
            "Poll on KEYHEALTH_POLL_SCHEDULE (and at start-up), take Key Vault events at POST /api/events, "
            "serve GET /status and /healthz, until SIGINT or SIGTERM."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    serve.add_argument(
        "--insecure-loopback",
        action="store_true",
        help="serve without any credential (no webhook secret, no Entra ID tenant); only on a loopback --host",
    )

    alerts = commands.add_parser(
        "alerts",
        help="check alert wiring: send a test alert to the configured sinks",
        description="Alert sinks come from KEYHEALTH_ALERTS (see the README, Alerts).",
    )
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    alert_test = alert_commands.add_parser(
        "test",
        help="send a sample alert, marked as a test, straight to sinks (not through incidents or the outbox)",
        epilog="exit status: 0 every sink took it, 1 some sink did not, 2 no such sink or a bad configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    alert_test.add_argument(
        "--sink", action="append", default=[], metavar="NAME", help="a sink's name (repeat; default: every sink)"
    )

    remediate = commands.add_parser(
        "remediate",
        help="plan rotations, recoveries and unpins for the live fleet, then act as the settings allow",
        description=(
            "Read the fleet once, show the remediation plan (each item with why, or why not), then act as "
            "KEYHEALTH_REMEDIATION and its allow-lists permit. Nothing is written with --dry-run, or when "
            "KEYHEALTH_REMEDIATION is off (the default)."
        ),
        epilog="exit status: 0 nothing failed, 1 some action failed, 2 bad settings",
    )
    remediate.add_argument("--dry-run", action="store_true", help="plan and report only; write nothing")
    remediate.add_argument(
        "--namespace", action="append", default=[], metavar="NAME", help="only this namespace (name or ARM id; repeat)"
    )

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML timeline per namespace (and a PNG)",
        description="Write one HTML file, viewable offline, with a timeline per namespace (most urgent first): each "
        "listed key's usable stretches and why it stops, the predicted revocation window, the scenario's changes, "
        "and the findings with their remedies.",
    )
    report.add_argument("scenario", type=Path, nargs="?", help="scenario file (or --live)")
    report.add_argument("--live", action="store_true", help="read the subscriptions as `check` does, instead of a file")
    report.add_argument(
        "--out", type=Path, default=Path("report.html"), help="HTML file to write (default: report.html)"
    )
    report.add_argument("--png", action="store_true", help="also write the timelines as an image beside it (.png)")
    report.add_argument("--at", metavar="DATE", help="judge as if now were DATE; ISO 8601, UTC")
    report.add_argument(
        "--horizon", metavar="DATE", help="predict up to DATE (a scenario file's default: now + 1 year)"
    )
    report.add_argument(
        "--subscription", action="append", metavar="ID", help="with --live: subscription to read (repeatable)"
    )

    sandbox = commands.add_parser(
        "sandbox",
        help="serve a scenario over the real Azure REST APIs on loopback (HTTPS)",
        description="Start the local Azure stand-in: ARM and Key Vault serving SCENARIO, until Ctrl+C.",
    )
    sandbox.add_argument("scenario", type=Path, help="scenario file to serve")
    sandbox.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    sandbox.add_argument(
        "--speed", type=float, default=0.0, help="let the stand-in's clock run this many times real time"
    )
    sandbox.add_argument("--events-to", metavar="URL", help="POST the Key Vault events the timeline implies here")
    sandbox.add_argument("--schema", choices=("eventgrid", "cloudevents"), default="eventgrid", help="event schema")
    return parser


def _add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    command.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="colour the table (auto: on a terminal)"
    )


def _use_colour(choice: str, stream: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR")


def simulate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    settings = Settings.from_environment()
    scenario, warnings = load_scenario(args.file)
    for warning in warnings:
        print(f"keyhealth: warning: {args.file}: {warning}", file=stderr)
    scenario = _judged_window(scenario, args.at, args.horizon)
    # Printing too: rendering 100,000 namespaces builds millions of objects, and with the collector
    # walking them (and the report) as they pile up, printing took twice as long.
    with batch_gc():
        try:
            report = evaluate(scenario, settings.thresholds)
        except ScenarioError as error:
            raise error.with_source(str(args.file)) from None
        _print_report(report, args, stdout)
    return exit_status(report)


def _judged_window(scenario: Scenario, at: str | None, horizon: str | None) -> Scenario:
    """The scenario judged at --at and predicted to --horizon, where given."""
    if at is not None:
        now = parse_instant(at, "--at")
        if scenario.horizon is not None and scenario.horizon <= now and horizon is None:
            raise ScenarioError("--at", "is not before the file's horizon; give --horizon too")
        scenario = dataclasses.replace(scenario, now=now)
    if horizon is not None:
        until = parse_instant(horizon, "--horizon")
        if until <= scenario.now:
            raise ScenarioError("--horizon", "must be after now")
        scenario = dataclasses.replace(scenario, horizon=until)
    return scenario


def _print_report(report: FleetReport, args: argparse.Namespace, stdout: TextIO) -> None:
    if args.format == "json":
        json.dump(prediction_document(report), stdout, indent=2)
        stdout.write("\n")
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        stdout.write(render_table(report, colour=_use_colour(args.color, stdout), width=width))


class _Progress:
    """One self-overwriting line on a terminal's stderr while a scan reads keys."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._shown = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self._enabled or total == 0:
            return
        width = 30
        filled = width * done // total
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r{stage:<10} [{bar}] {done}/{total}")
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _scan(
    settings: Settings, subscriptions: Sequence[str] | None, now: datetime, progress: _Progress
) -> tuple[Scenario, FleetReport]:
    """Read the live fleet once (Azure, or the stand-in the settings point at) and judge it."""
    from monitor.app.reading import check as check_fleet
    from monitor.entry.bootstrap import azure_readers

    async def scan() -> tuple[Scenario, FleetReport]:
        async with azure_readers(settings) as readers:
            return await check_fleet(
                readers,
                now=now,
                thresholds=settings.thresholds,
                subscriptions=subscriptions,
                concurrency=settings.concurrency,
                progress=progress,
            )

    try:
        return asyncio.run(scan())
    finally:
        progress.finish()


def check(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.formats.scenario_io import save_scenario

    settings = Settings.from_environment()
    subscriptions = args.subscription or settings.subscriptions
    now = parse_instant(args.at, "--at") if args.at is not None else datetime.now(UTC)
    progress = _Progress(stderr, enabled=not args.no_progress and stderr.isatty())
    scenario, report = _scan(settings, subscriptions, now, progress)
    if args.save is not None:
        try:
            save_scenario(scenario, args.save)
        except OSError as error:
            raise ScenarioError("$", f"cannot write: {error.strerror}", source=str(args.save)) from None
        print(f"keyhealth: saved what was read to {args.save}", file=stderr)
    _print_report(report, args, stdout)
    return exit_status(report)


def report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.formats.report import build_timeline, render_html, render_png

    settings = Settings.from_environment()
    if args.live == (args.scenario is not None):
        raise ScenarioError("report", "give a scenario file or --live (one of them)")
    if args.live:
        now = parse_instant(args.at, "--at") if args.at is not None else datetime.now(UTC)
        progress = _Progress(stderr, enabled=stderr.isatty())
        scenario, _ = _scan(settings, args.subscription or settings.subscriptions, now, progress)
        scenario = _judged_window(scenario, None, args.horizon)
        source = "live fleet"
    else:
        scenario, warnings = load_scenario(args.scenario)
        for warning in warnings:
            print(f"keyhealth: warning: {args.scenario}: {warning}", file=stderr)
        scenario = _judged_window(scenario, args.at, args.horizon)
        source = f"scenario {args.scenario.name}"
    try:
        fleet = build_timeline(scenario, settings.thresholds)
    except ScenarioError as error:
        raise error.with_source(str(args.scenario or "live fleet")) from None
    written = [args.out]
    try:
        args.out.write_text(render_html(fleet, source=source, generated=datetime.now(UTC)), encoding="utf-8")
        if args.png:
            png = args.out.with_suffix(".png")
            render_png(fleet, png)
            written.append(png)
    except OSError as error:
        raise ScenarioError("--out", f"cannot write: {error.strerror}", source=str(error.filename)) from None
    print(f"keyhealth: wrote {' and '.join(str(p) for p in written)} ({len(fleet.namespaces)} namespaces)", file=stdout)
    return EXIT_HEALTHY


def demo(args: argparse.Namespace, stdout: TextIO) -> int:
    from monitor.entry.demo import run_demo

    pace = args.pace if args.pace is not None else (1.0 if stdout.isatty() else 0.0)
    if pace < 0:
        raise ScenarioError("--pace", "must be 0 or more seconds")
    width = shutil.get_terminal_size((100, 24)).columns
    reader = None
    if args.metrics:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from monitor.entry.bootstrap import configure_telemetry

        reader = InMemoryMetricReader()
        configure_telemetry(prometheus=False, extra_readers=[reader])
    status = run_demo(
        stdout, scenario_path=args.scenario, pace=pace, colour=_use_colour(args.color, stdout), width=width
    )
    if reader is not None:
        from monitor.formats.render import render_metrics

        stdout.write(render_metrics(reader.get_metrics_data()))
    return status


def serve(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.entry.serve import run_serve

    settings = Settings.from_environment()
    try:
        return run_serve(
            settings,
            args.host,
            args.port,
            lambda url: print(f"keyhealth: serving at {url}", file=stdout, flush=True),
            insecure_loopback=args.insecure_loopback,
        )
    except OSError as error:
        print(f"keyhealth: error: cannot serve on {args.host}:{args.port}: {error.strerror}", file=stderr)
        return EXIT_INVALID


def sandbox(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.sandbox.run import run_sandbox

    try:
        return run_sandbox(
            args.scenario,
            args.port,
            speed=args.speed,
            events_to=args.events_to,
            schema=args.schema,
            stdout=stdout,
            stderr=stderr,
        )
    except OSError as error:
        print(f"keyhealth: error: cannot serve on port {args.port}: {error.strerror}", file=stderr)
        return EXIT_INVALID


def alerts_test(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.app.delivery import send_test_alerts
    from monitor.entry.bootstrap import build_credential, build_sinks_for

    settings = Settings.from_environment()
    if not settings.alert_config.sinks:
        print("keyhealth: error: no alert sinks are configured (KEYHEALTH_ALERTS is empty)", file=stderr)
        return EXIT_INVALID

    async def send() -> list[Any]:
        credential = build_credential(settings)
        sinks = build_sinks_for(settings, credential)
        try:
            return await send_test_alerts(sinks.sinks, args.sink, now=datetime.now(UTC), policy=settings.alert_policy)
        finally:
            await sinks.close()
            await credential.close()

    try:
        results = asyncio.run(send())
    except KeyError as missing:
        known = ", ".join(s.name for s in settings.alert_config.sinks)
        print(f"keyhealth: error: no sink is named {missing.args[0]!r}; configured: {known}", file=stderr)
        return EXIT_INVALID
    for result in results:
        outcome = "sent" if result.ok else f"FAILED: {result.error}"
        print(f"{result.sink} ({result.kind}): {outcome}", file=stdout)
    return EXIT_HEALTHY if all(r.ok for r in results) else EXIT_WARNING


def remediate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from monitor.app.poll import remediate_once
    from monitor.entry.bootstrap import build_monitor

    settings = Settings.from_environment()
    now = datetime.now(UTC)

    async def run() -> tuple[FleetReport, list[Any]]:
        monitor = build_monitor(settings)
        try:
            return await remediate_once(monitor, now=now, dry_run=args.dry_run, namespaces=args.namespace)
        finally:
            assert monitor.close is not None  # noqa: S101 - narrows the type; holds by construction
            await monitor.close()

    report, outcomes = asyncio.run(run())
    mode = "dry run (--dry-run)" if args.dry_run else settings.remediation
    print(
        f"keyhealth remediation at {now:%Y-%m-%dT%H:%M:%SZ}, mode {mode}: {len(report.namespaces)} namespaces read",
        file=stdout,
    )
    if not outcomes:
        print("nothing to do: no key to rotate or recover, no namespace to unpin", file=stdout)
    for outcome in outcomes:
        proposal = outcome.proposal
        print(f"- {proposal.action.value} {proposal.target} [{outcome.status}]", file=stdout)
        print(f"    why: {proposal.reason}; namespaces: {', '.join(proposal.namespaces)}", file=stdout)
        print(f"    {outcome.detail}", file=stdout)
    return EXIT_WARNING if any(o.status == "failed" for o in outcomes) else EXIT_HEALTHY


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return simulate(args, out, err)
        if args.command == "check":
            return check(args, out, err)
        if args.command == "demo":
            return demo(args, out)
        if args.command == "serve":
            return serve(args, out, err)
        if args.command == "report":
            return report(args, out, err)
        if args.command == "sandbox":
            return sandbox(args, out, err)
        if args.command == "alerts":
            return alerts_test(args, out, err)
        if args.command == "remediate":
            return remediate(args, out, err)
    except KeyhealthError as error:
        print(f"keyhealth: error: {error}", file=err)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_HEALTHY
    raise AssertionError(f"unhandled command {args.command}")
