"""The `keyhealth` command line: parses arguments, wires the parts, maps outcomes to exit statuses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from monitor import __version__
from monitor.config import Settings
from monitor.domain.errors import KeyhealthError, ScenarioError
from monitor.domain.findings import Severity
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.scenario import parse_instant
from monitor.render import prediction_document, render_table
from monitor.scenario_io import load_scenario

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
    simulate.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    simulate.add_argument("--at", metavar="DATE", help="judge as if now were DATE (what-if); ISO 8601, UTC")
    simulate.add_argument(
        "--horizon", metavar="DATE", help="predict up to DATE (default: the file's, else now + 1 year)"
    )
    simulate.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="colour the table (auto: on a terminal)"
    )
    return parser


def _use_colour(choice: str, stream: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR")


def simulate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    settings = Settings.from_environment()
    scenario, warnings = load_scenario(args.file)
    for warning in warnings:
        print(f"keyhealth: warning: {args.file}: {warning}", file=stderr)
    if args.at is not None:
        now = parse_instant(args.at, "--at")
        if scenario.horizon is not None and scenario.horizon <= now and args.horizon is None:
            raise ScenarioError("--at", "is not before the file's horizon; give --horizon too")
        scenario = dataclasses.replace(scenario, now=now)
    if args.horizon is not None:
        horizon = parse_instant(args.horizon, "--horizon")
        if horizon <= scenario.now:
            raise ScenarioError("--horizon", "must be after now")
        scenario = dataclasses.replace(scenario, horizon=horizon)
    try:
        report = evaluate(scenario, settings.thresholds)
    except ScenarioError as error:
        raise error.with_source(str(args.file)) from None
    if args.format == "json":
        json.dump(prediction_document(report), stdout, indent=2)
        stdout.write("\n")
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        stdout.write(render_table(report, colour=_use_colour(args.color, stdout), width=width))
    return exit_status(report)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return simulate(args, out, err)
    except KeyhealthError as error:
        print(f"keyhealth: error: {error}", file=err)
        return EXIT_INVALID
    except BrokenPipeError:
        return EXIT_HEALTHY
    raise AssertionError(f"unhandled command {args.command}")
