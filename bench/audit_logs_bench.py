"""Benchmark: what reading the service's own key accesses (KEYHEALTH_AUDIT_LOGS=on) adds to a poll.

Run it with `.venv/bin/python -m bench.audit_logs_bench --scales 10000`.

The fleet (deterministic): N namespaces, each with its own system-assigned identity, half listing one key and
half two (in two vaults), N/2 keys over 20 vaults. The stand-in runs in its own process, serving ARM, Key Vault
and the Logs query API with 20 ms added to every answer; its Service Bus has polled every namespace for 20
minutes, so the 16-minute window the monitor reads holds three or four polls of each.

Measured in this process, through the real SDK clients over HTTPS: the fleet read (inventory, vaults, keys),
then the observation (each vault's diagnostic settings, the workspace, the Logs queries), then the judging with
and without the observations; the queries sent, the rows they returned, the accesses kept after compaction,
wall and CPU time, and the peak RSS. Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import resource
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

NOW = "2026-11-22T00:00:00Z"
VAULTS = 20


def _vault(index: int) -> str:
    return f"https://kv-audit-{index:02d}.vault.azure.net"


def _principal(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-{index:012x}"


def build_fleet(namespaces: int) -> dict[str, Any]:
    key_count = max(namespaces // 2, VAULTS)
    keys = [
        {
            "vault": _vault(n % VAULTS),
            "name": f"sb-key-{n:05d}",
            "versions": [{"version": f"{n:032x}", "created": "2026-06-01T00:00:00Z"}],
        }
        for n in range(key_count)
    ]
    documents = []
    access: dict[int, dict[str, list[str]]] = {v: {} for v in range(VAULTS)}
    for n in range(namespaces):
        principal = _principal(n + 1)
        picks = [n % key_count] + ([(n + key_count // 2 + 1) % key_count] if n % 2 else [])
        refs = []
        for index in dict.fromkeys(picks):
            refs.append({"vault": keys[index]["vault"], "name": keys[index]["name"]})
            access[index % VAULTS][principal] = ["get", "wrapKey", "unwrapKey"]
        documents.append(
            {
                "id": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-{n % 50:02d}"
                f"/providers/Microsoft.ServiceBus/namespaces/sb-audit-{n:05d}",
                "name": f"sb-audit-{n:05d}",
                "identity": {"principal_id": principal},
                "keys": refs,
            }
        )
    vaults = [{"uri": _vault(v), "access": access[v]} for v in range(VAULTS)]
    return {"now": NOW, "vaults": vaults, "keys": keys, "namespaces": documents, "changes": []}


def serve(fleet_path: str, latency: float, commands: Connection) -> None:
    from monitor.domain.scenario import parse_scenario
    from monitor.sandbox import RateLimit, Sandbox

    scenario, _ = parse_scenario(json.loads(Path(fleet_path).read_text()))
    with Sandbox(scenario, rate_limit=RateLimit(4000, 10.0), key_pool=16) as sandbox:
        sandbox.faults.latency = latency
        commands.send(sandbox.environment())
        commands.recv()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(environment: dict[str, str]) -> dict[str, Any]:
    from monitor.app.reading import observe_snapshot, read_snapshot
    from monitor.domain.fleet import evaluate
    from monitor.domain.model import Scenario
    from monitor.domain.observed import for_storage, observe
    from monitor.domain.scenario_writing import scenario_document
    from monitor.entry.bootstrap import azure_readers
    from monitor.entry.config import Settings

    settings = Settings.from_environment({**environment, "KEYHEALTH_AUDIT_LOGS": "on", "KEYHEALTH_CONCURRENCY": "128"})
    now = datetime.fromisoformat(NOW.replace("Z", "+00:00")).astimezone(UTC)
    figures: dict[str, Any] = {}
    async with azure_readers(settings) as readers:
        assert readers.observer is not None
        started = time.monotonic()
        snapshot = await read_snapshot(readers, concurrency=settings.concurrency)
        figures["read_seconds"] = round(time.monotonic() - started, 2)
        started, cpu = time.monotonic(), time.process_time()
        observed, reading = await observe_snapshot(readers.observer, snapshot, now=now)
        figures["observe_seconds"] = round(time.monotonic() - started, 2)
        figures["observe_cpu_seconds"] = round(time.process_time() - cpu, 2)
        figures.update(
            queries=reading.queries,
            rows=reading.rows,
            rejected_rows=reading.rejected_rows,
            failed_queries=reading.failed_queries,
            workspaces=reading.workspaces,
            settings_reads=reading.settings_reads,
            accesses_kept=sum(len(o.accesses) for o in reading.observations.values()),
            observed=sum(1 for o in reading.observations.values() if o.unobserved is None),
            unobserved=sum(1 for o in reading.observations.values() if o.unobserved is not None),
        )
        for label, basis in (("judge_seconds_without", snapshot), ("judge_seconds_with", observed)):
            started = time.monotonic()
            report = evaluate(Scenario(now=now, snapshot=basis), settings.thresholds)
            figures[label] = round(time.monotonic() - started, 2)
        # What the poll stores of the fleet (the snapshot document), with the observations and without.
        stored = dataclasses.replace(
            observed,
            namespaces=tuple(
                dataclasses.replace(n, observed=for_storage(n.observed)) if n.observed is not None else n
                for n in observed.namespaces
            ),
        )
        for label, basis in (("stored_snapshot_mib_without", snapshot), ("stored_snapshot_mib_with", stored)):
            document = scenario_document(Scenario(now=now, snapshot=basis))
            figures[label] = round(len(json.dumps(document, separators=(",", ":"))) / 2**20, 1)
        judged = [observe(n.prediction.namespace) for n in report.namespaces]
        figures["phase_known"] = sum(1 for o in judged if o is not None and o.phase is not None and o.phase.known)
        figures["findings"] = sorted({f.code.value for n in report.namespaces for f in n.findings})
    figures["peak_rss_mib"] = round(_peak_mib())
    return figures


def run_scale(namespaces: int, latency: float, workdir: Path) -> dict[str, Any]:
    fleet_path = workdir / f"fleet-{namespaces}.json"
    fleet_path.write_text(json.dumps(build_fleet(namespaces)))
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve, args=(str(fleet_path), latency, theirs), daemon=True)
    process.start()
    try:
        environment: dict[str, str] = ours.recv()
        figures = asyncio.run(measure(environment))
    finally:
        ours.send("stop")
        process.join(timeout=30)
    return {"namespaces": namespaces, **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scales", default="10000", help="fleet sizes in namespaces (comma-separated)")
    parser.add_argument("--latency", type=float, default=0.020, help="seconds added to every stand-in answer")
    parser.add_argument("--json", type=Path, default=Path("audit-logs-bench.json"), help="where to write the figures")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for scale in (int(s) for s in args.scales.split(",") if s.strip()):
            result = run_scale(scale, args.latency, Path(work))
            results.append(result)
            print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
