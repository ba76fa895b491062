"""`keyhealth demo`: the stand-in serves a bundled fleet, `check` reads it over HTTPS, then the timeline plays."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TextIO

from monitor.bootstrap import azure_readers
from monitor.config import Settings
from monitor.domain.findings import Severity, humanize
from monitor.domain.fleet import FleetReport
from monitor.domain.model import (
    KEEP,
    Change,
    DeleteKey,
    DeleteVault,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    Scenario,
    SetAccess,
    UpdateVersion,
    vault_short_name,
)
from monitor.domain.prediction import Status
from monitor.domain.scenario import format_instant
from monitor.render import render_table
from monitor.sandbox import Sandbox
from monitor.scenario_io import load_scenario
from monitor.service import check

DEMO_FLEET = "demo-fleet.json"


def bundled_fleet() -> Path:
    """The demo's scenario file, shipped inside the package."""
    return Path(str(resources.files("monitor.data").joinpath(DEMO_FLEET)))


def describe_change(change: Change) -> str:
    """One change in words an on-call engineer uses."""
    vault = vault_short_name(change.vault)
    if isinstance(change, NewVersion):
        state = "" if change.version.enabled else " (disabled!)"
        return f"key {change.key} in {vault} rotated to version {change.version.version}{state}"
    if isinstance(change, UpdateVersion):
        parts = []
        if change.enabled is not KEEP:
            parts.append("enabled" if change.enabled else "disabled")
        if change.exp is not KEEP:
            parts.append(f"expiry set to {format_instant(change.exp)}" if change.exp else "expiry removed")
        if change.nbf is not KEEP:
            parts.append(f"not-before set to {format_instant(change.nbf)}" if change.nbf else "not-before removed")
        if change.key_ops is not KEEP:
            parts.append(f"operations set to {', '.join(change.key_ops or ()) or 'none'}")
        which = f"version {change.version}" if change.version else "current version"
        return f"key {change.key} in {vault} ({which}): {', '.join(parts)}"
    if isinstance(change, DeleteKey):
        return f"key {change.key} in {vault} deleted"
    if isinstance(change, RecoverKey):
        return f"key {change.key} in {vault} recovered"
    if isinstance(change, PurgeKey):
        return f"key {change.key} in {vault} purged"
    if isinstance(change, SetAccess):
        granted = ", ".join(sorted(change.permissions)) or "nothing"
        return f"principal {change.principal[:8]}… now holds {granted} on {vault}"
    if isinstance(change, DeleteVault):
        return f"vault {vault} deleted"
    assert isinstance(change, RecoverVault)
    return f"vault {vault} recovered"


@dataclass(frozen=True, slots=True)
class _Row:
    status: Status
    earliest: datetime | None
    worst: Severity | None


def _rows(report: FleetReport) -> dict[str, _Row]:
    return {
        n.prediction.namespace.name: _Row(n.prediction.status_now, n.prediction.revoked_at_earliest, n.worst)
        for n in report.namespaces
    }


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
    """Serve the fleet, check it over HTTPS, then step the stand-in's clock through the timeline.

    Returns 0: the demo shows problems, it does not have them. Raises ScenarioError for a bad file.
    """
    path = scenario_path or bundled_fleet()
    scenario, _ = load_scenario(path)
    with Sandbox(scenario) as sandbox:
        settings = Settings.from_environment(sandbox.environment())
        print(f"keyhealth demo: a local Azure stand-in serves {path.name} at {sandbox.url}", file=stdout)
        print(
            "the real Azure SDK clients read it over HTTPS (ARM + Key Vault), exactly as `keyhealth check` "
            "reads a subscription\n",
            file=stdout,
        )
        report = asyncio.run(_check(settings, sandbox.clock.now()))
        stdout.write(render_table(report, colour=colour, width=width))
        previous = _rows(report)
        plan = _steps(scenario)[:steps] if steps is not None else _steps(scenario)
        for instant in plan:
            if pace:
                time.sleep(pace)
            sandbox.clock.set(instant + timedelta(seconds=1))
            now = sandbox.clock.now()
            happened = [c for c in scenario.changes if c.at == instant]
            print(f"\n== {format_instant(now)} ({humanize(now - scenario.now).removeprefix('in ')} later)", file=stdout)
            for change in happened:
                print(f"   {describe_change(change)}", file=stdout)
            report = asyncio.run(_check(settings, now))
            current = _rows(report)
            _print_differences(stdout, previous, current, report, now)
            previous = current
        print(
            "\nThat was the timeline. Next: `keyhealth sandbox FILE` serves your own scenario; "
            "`keyhealth check` reads a real subscription.",
            file=stdout,
        )
    return 0


async def _check(settings: Settings, now: datetime) -> FleetReport:
    async with azure_readers(settings) as readers:
        _, report = await check(readers, now=now, thresholds=settings.thresholds, concurrency=settings.concurrency)
    return report


def _print_differences(
    stdout: TextIO, previous: dict[str, _Row], current: dict[str, _Row], report: FleetReport, now: datetime
) -> None:
    changed = [name for name, row in current.items() if previous.get(name) != row]
    if not changed:
        print("   no namespace's prediction changed", file=stdout)
        return
    findings = {n.prediction.namespace.name: n.findings for n in report.namespaces}
    for name in changed:
        before, after = previous.get(name), current[name]
        window = "no revocation predicted"
        if after.earliest is not None:
            window = f"revoked from {format_instant(after.earliest)} ({humanize(after.earliest - now)})"
        status = after.status.value
        if before is not None and before.status != after.status:
            status = f"{before.status.value} -> {after.status.value}"
        top = findings[name][0] if findings[name] else None
        detail = f"; {top.severity.label} {top.code.value}" if top else ""
        print(f"   {name:<14} {status:<20} {window}{detail}", file=stdout)
