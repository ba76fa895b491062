"""Benchmark: one poll of a large fleet against the local Azure stand-in, beside a naive scanner and the lower bound.

Run it with `make bench-fleet` or `.venv/bin/python -m bench.fleet_bench [options]`.

The fleet (deterministic): N namespaces in 10 subscriptions, each listing 3 keys in 3 different vaults
(3N key references) through one user-assigned identity, N/2 distinct software RSA keys spread over 20
vaults, and one key listed by N/10 namespaces (1,000 at N = 10,000). The stand-in serves it over HTTPS
from its own process (so it has a core of its own) with 20 ms added to every answer and Key Vault's rate
limit enforced (4,000 requests per 10 s per vault, then 429 with Retry-After). One namespace in 100 is the
primary of a Geo-DR pair (its partner uses the same identity); every namespace's pairing is read once, over
the first polls (a poll reads at most 2,000: the "learning" polls between first and steady), then recalled
from the store (KEYHEALTH_GEO_DR_REFRESH_MINUTES).

Measured, each in a fresh process:
- our poll (`monitor.app.poll.poll`: Resource Graph inventory, vault reads, paced key reads, prediction,
  findings, state recorded in each store `--stores` names: SQLite, and Table Storage in an Azurite
  the benchmark starts): the first poll (nothing learnt yet: every key read in full) and
  the next one (steady state: unchanged keys confirmed from each vault's key listing), wall and CPU
  time, requests the stand-in answered, 429s, peak RSS;
- a naive scanner, what a user would write with the sync SDKs: list subscriptions, list each
  subscription's namespaces, then `get_key` for every listed key reference, one after another;
- the lower bound for the fleet: the larger of (one read of each distinct key in the busiest vault /
  the rate the configured share allows) and (one round-trip chain: subscriptions, inventory, vaults,
  key read);
- one KeyNewVersionCreated event for the shared key: time until the predictions of the namespaces
  that list it are recorded.

Prints a table and writes JSON (--json). The naive scanner takes about 23 ms a key reference here
(10,000 namespaces: 30,000 references, ~12 minutes); --naive-namespaces N times it on the first N
namespaces only and extrapolates linearly (a sequential loop), saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import math
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from monitor.sandbox.faults import GRAPH_QUOTA  # the quota the stand-in enforces, as Resource Graph documents it

NOW = "2026-11-22T00:00:00Z"
VAULTS = 20
SUBSCRIPTIONS = 10
IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-identity/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-servicebus-cmk"
)
PRINCIPAL = "00000000-0000-0000-0000-00000000c0de"
SHARED_KEY = "sb-shared"
LISTING_PAGE = 25  # Key Vault's largest key listing page
INVENTORY_PAGE = 1000  # Resource Graph's largest page
COMPETENT_THREADS = 16
GEO_DR_EVERY = 100  # one namespace in this many is a Geo-DR primary


def _subscription(index: int) -> str:
    return f"00000000-0000-0000-0000-{index:012d}"


def _vault(index: int) -> str:
    return f"https://kv-fleet-{index:02d}.vault.azure.net"


def build_fleet(namespaces: int) -> dict[str, Any]:
    """The scenario document of a fleet of `namespaces` (see the module's docstring)."""
    key_count = max(namespaces // 2, VAULTS * 3)
    keys_per_vault = -(-key_count // VAULTS)
    keys = [
        {
            "vault": _vault(n % VAULTS),
            "name": f"sb-key-{n:05d}",
            "versions": [{"version": f"{n:032x}", "created": "2026-06-01T00:00:00Z", "kty": "RSA", "key_size": 2048}],
        }
        for n in range(key_count)
    ]
    keys.append(
        {
            "vault": _vault(0),
            "name": SHARED_KEY,
            "versions": [{"version": "5" * 32, "created": "2026-06-01T00:00:00Z", "kty": "RSA", "key_size": 2048}],
        }
    )
    shared_by = namespaces // 10
    documents = []
    for n in range(namespaces):
        # Three keys in three different vaults: a vault outage never takes all of a namespace's keys.
        refs = []
        for j in range(3):
            vault = (n + j * 7) % VAULTS
            slot = (n // VAULTS + j) % keys_per_vault
            index = min(slot * VAULTS + vault, key_count - 1)
            refs.append(
                {"vault": keys[index]["vault"], "name": keys[index]["name"], "version": None, "identity": IDENTITY}
            )
        if n < shared_by:
            refs[0] = {"vault": _vault(0), "name": SHARED_KEY, "version": None, "identity": IDENTITY}
        subscription = _subscription(n % SUBSCRIPTIONS)
        name = f"sb-fleet-{n:05d}"
        group = f"/subscriptions/{subscription}/resourceGroups/rg-{n % 50:02d}/providers/Microsoft.ServiceBus"
        document: dict[str, Any] = {
            "id": f"{group}/namespaces/{name}",
            "name": name,
            "identity": {"principal_id": None, "user_assigned": {IDENTITY: PRINCIPAL}},
            "keys": refs,
        }
        if n % GEO_DR_EVERY == 0:
            document["geo_dr"] = {
                "alias": name,
                "partner": f"{group}/namespaces/{name}-dr",
                "partner_identity": {"principal_id": None, "user_assigned": {IDENTITY: PRINCIPAL}},
            }
        documents.append(document)
    vaults = [
        {
            "uri": _vault(v),
            "soft_delete": True,
            "purge_protection": True,
            "rbac": False,
            "access": {PRINCIPAL: ["get", "wrapKey", "unwrapKey"]},
        }
        for v in range(VAULTS)
    ]
    return {"now": NOW, "vaults": vaults, "keys": keys, "namespaces": documents, "changes": []}


# --- Table Storage: Azurite, as the tests run it ------------------------------------------------------

AZURITE_TABLE = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "azurite-table"
# Azurite's published development account: a well-known key, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """An in-memory azurite-table on a free loopback port, for the benchmark's Table Storage polls."""

    def __init__(self, workdir: Path) -> None:
        if not AZURITE_TABLE.exists():
            raise SystemExit(f"{AZURITE_TABLE} is missing: run `npm ci` (make does), or pass --stores sqlite")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._log = (workdir / "azurite.log").open("wb")
        command = [str(AZURITE_TABLE), "--tableHost", "127.0.0.1", "--tablePort", str(self.port)]
        command += ["--inMemoryPersistence", "--silent", "--disableTelemetry"]
        self._process = subprocess.Popen(command, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT)  # noqa: S603
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise SystemExit("azurite-table did not start within 60 s")

    def settings(self, table_prefix: str) -> dict[str, str]:
        """App settings for a fresh set of tables (one prefix a fleet size) in this Azurite."""
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )
        return {
            "KEYHEALTH_STATE_STORE": "tables",
            "KEYHEALTH_TABLES_CONNECTION_STRING": connection,
            "KEYHEALTH_TABLE_PREFIX": table_prefix,
        }

    def cpu_seconds(self) -> float:
        """Azurite's CPU so far (user and system, all its threads): on this machine it shares the cores with
        the poll and the stand-in, where Azure's own Table Storage would not."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()


# --- the stand-in, in a process of its own --------------------------------------------------------------


def serve(fleet_path: str, latency: float, commands: Connection) -> None:
    from monitor.domain.scenario import parse_scenario
    from monitor.sandbox import RateLimit, Sandbox

    scenario, _ = parse_scenario(json.loads(Path(fleet_path).read_text()))
    with Sandbox(scenario, rate_limit=RateLimit(4000, 10.0), key_pool=16) as sandbox:
        sandbox.faults.latency = latency
        commands.send(sandbox.environment())
        cpu_at_reset = time.process_time()
        while True:
            command = commands.recv()
            if command == "stop":
                return
            if command == "reset":
                sandbox.requests.clear()
                cpu_at_reset = time.process_time()
                commands.send(None)
            elif command == "stats":
                records = sandbox.requests.records
                by_vault = Counter(r.vault for r in records if r.service == "keyvault")
                commands.send(
                    {
                        "requests": len(records),
                        "keyvault": sum(by_vault.values()),
                        "arm": sum(1 for r in records if r.service == "arm"),
                        "throttled": sum(1 for r in records if r.status == 429),
                        "busiest_vault": max(by_vault.values(), default=0),
                        # The stand-in's own CPU since the reset: is it, rather than our client, the limit?
                        "cpu_ms": round((time.process_time() - cpu_at_reset) * 1000),
                    }
                )


class StandIn:
    def __init__(self, fleet_path: str, latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe()
        self._process = context.Process(target=serve, args=(fleet_path, latency, theirs), daemon=True)
        self._process.start()
        self.environment: dict[str, str] = self._ours.recv()

    def reset(self) -> None:
        self._ours.send("reset")
        self._ours.recv()

    def stats(self) -> dict[str, int]:
        self._ours.send("stats")
        stats: dict[str, int] = self._ours.recv()
        return stats

    def stop(self) -> None:
        self._ours.send("stop")
        self._process.join(timeout=30)


# --- what is measured, each in a fresh process ------------------------------------------------------------


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_poll(
    environment: dict[str, str],
    store: dict[str, str],
    share: str,
    shared_key_vault: str,
    labels: tuple[str, ...],
    results: Connection,
) -> None:
    """A poll for each of `labels` in this process ("first" then "steady": one instance; "fresh" alone: another
    instance after those, with nothing read itself), then (after "steady") one event for the shared key and
    the CPU floor, on the store `store` names."""
    os.environ.update(environment)
    profile_dir = os.environ.get("KEYHEALTH_BENCH_PROFILE", "")
    store_name = store.get("KEYHEALTH_STATE_STORE", "sqlite")
    from monitor.app.events import handle_event
    from monitor.app.poll import poll
    from monitor.entry.bootstrap import build_monitor
    from monitor.entry.config import Settings
    from monitor.formats.events import parse_event

    settings = Settings.from_environment(
        {
            **os.environ,
            **store,
            "KEYHEALTH_KEYVAULT_SHARE": share,
            "KEYHEALTH_CONCURRENCY": "128",
        }
    )
    now = datetime(2026, 11, 22, tzinfo=UTC)
    event_payload = [
        {
            "id": "bench-event-1",
            "topic": "/subscriptions/x/resourceGroups/rg-keyvaults/providers/Microsoft.KeyVault/vaults/kv-fleet-00",
            "subject": SHARED_KEY,
            "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
            "data": {
                "Id": f"{shared_key_vault}/keys/{SHARED_KEY}/{'5' * 32}",
                "VaultName": "kv-fleet-00",
                "ObjectType": "Key",
                "ObjectName": SHARED_KEY,
                "Version": "5" * 32,
                "NBF": None,
                "EXP": None,
            },
            "dataVersion": "1",
            "metadataVersion": "1",
            "eventTime": "2026-11-22T00:00:00Z",
        }
    ]

    async def run() -> dict[str, Any]:
        monitor = build_monitor(settings)
        measured: dict[str, Any] = {}
        pairings = monitor.readers.pairings
        try:
            for label in labels:
                if label == "steady" and pairings is not None:
                    measured["learning"] = await _learn_pairings(monitor, now)
                results.send(("reset", None))
                results.recv()
                read_before = pairings.reads if pairings is not None else 0
                profiler = cProfile.Profile() if profile_dir else None
                wall, cpu = time.perf_counter(), time.process_time()
                if profiler is not None:
                    profiler.enable()
                result = await poll(monitor, now=now)
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(str(Path(profile_dir) / f"{label}-{store_name}.prof"))
                measured[label] = {
                    "wall_s": time.perf_counter() - wall,
                    "cpu_s": time.process_time() - cpu,
                    "namespaces": len(result.report.namespaces) if result.report else 0,
                    "statuses": dict(Counter(n.prediction.status_now.value for n in result.report.namespaces))
                    if result.report
                    else {},
                    "pairing_reads": (pairings.reads if pairings is not None else 0) - read_before,
                }
                del result  # as the Functions timer does: the next poll does not run beside this one's report
                results.send(("stats", None))
                measured[label]["stand_in"] = results.recv()
            # The polls' own peak: what follows (the bench's CPU floor, the event) is not what a poll holds.
            measured["polls_peak_rss_mib"] = _peak_mib()
            if "steady" not in labels:
                return measured
            measured["floor"] = await _cpu_floor(monitor, now)
            (event,) = [e for e in (parse_event(item) for item in event_payload)]
            results.send(("reset", None))
            results.recv()
            profiler = cProfile.Profile() if profile_dir else None
            wall = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            outcome = await handle_event(monitor, event, now=now)  # type: ignore[arg-type]
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(Path(profile_dir) / f"event-{store_name}.prof"))
            measured["event"] = {
                "wall_s": time.perf_counter() - wall,
                "namespaces": len(outcome.namespaces),
                "outcome": outcome.outcome.value,
            }
            results.send(("stats", None))
            measured["event"]["stand_in"] = results.recv()
        finally:
            assert monitor.close is not None
            await monitor.close()
        return measured

    measured = asyncio.run(run())
    measured["peak_rss_mib"] = _peak_mib()
    results.send(("done", measured))


async def _learn_pairings(monitor: Any, now: datetime, *, limit: int = 60) -> dict[str, Any]:
    """The polls after the first that still read Geo-DR pairings a poll does not wait for (a new deployment
    learns them over its first polls): polled until one reads none, so "steady" is the steady state."""
    from monitor.app.poll import poll

    pairings = monitor.readers.pairings
    walls, reads = [], []
    for _ in range(limit):
        before, wall = pairings.reads, time.perf_counter()
        await poll(monitor, now=now)
        if pairings.reads == before:
            break
        walls.append(time.perf_counter() - wall)
        reads.append(pairings.reads - before)
    return {"polls": len(walls), "wall_s": walls, "pairing_reads": reads}


async def _cpu_floor(monitor: Any, now: datetime) -> dict[str, float]:
    """What any poll of this fleet must compute in-process, timed on the snapshot just stored: predict and find
    (evaluate), render each namespace's state and compare it with the stored one (record, nothing changed)."""
    from monitor.app.state import NamespaceState
    from monitor.domain.fleet import evaluate
    from monitor.domain.model import Scenario
    from monitor.domain.scenario import parse_scenario
    from monitor.formats.render import namespace_document

    stored = await monitor.store.get_snapshot()
    scenario, _ = parse_scenario(stored.document)
    cpu = time.process_time()
    report = evaluate(Scenario(now=now, snapshot=scenario.snapshot), monitor.thresholds)
    judged = time.process_time()
    digests = [
        NamespaceState.of(n.prediction.namespace, namespace_document(n), evaluated_at=now).digest
        for n in report.namespaces
    ]
    rendered = time.process_time()
    del digests
    return {"evaluate_s": judged - cpu, "render_s": rendered - judged, "cpu_s": rendered - cpu}


class _SyncScanner:
    """What both baseline scanners share: the sync SDKs' clients on the stand-in, and the namespaces' keys."""

    def __init__(self, environment: dict[str, str]) -> None:
        from monitor.sandbox import StaticTokenCredential

        self._arm = environment["KEYHEALTH_ARM_ENDPOINT"]
        self._vaults_at = environment["KEYHEALTH_KEYVAULT_ENDPOINT"]
        self._ca = environment["KEYHEALTH_CA_BUNDLE"]
        self._credential = StaticTokenCredential()
        self._key_clients: dict[str, Any] = {}

    def namespaces(self) -> Iterator[list[tuple[str, str, str]]]:
        """Each CMK namespace's key references (vault host, key name, version or ''), subscription by
        subscription, as the user's scanner lists them (ARM, the SDK's models)."""
        from azure.mgmt.resource.subscriptions import SubscriptionClient
        from azure.mgmt.servicebus import ServiceBusManagementClient

        subscriptions = SubscriptionClient(self._credential, base_url=self._arm, connection_verify=self._ca)
        for subscription in subscriptions.subscriptions.list():
            servicebus = ServiceBusManagementClient(
                self._credential, subscription.subscription_id or "", base_url=self._arm, connection_verify=self._ca
            )
            for namespace in servicebus.namespaces.list():
                encryption = namespace.properties.encryption if namespace.properties else None
                entries = (encryption.key_vault_properties or []) if encryption else []
                yield [
                    ((e.key_vault_uri or "").split("//", 1)[-1].rstrip("/"), e.key_name or "", e.key_version or "")
                    for e in entries
                ]

    def key_client(self, host: str) -> Any:
        from azure.keyvault.keys import KeyClient

        client = self._key_clients.get(host)
        if client is None:
            url = f"{self._vaults_at}/{host}"
            client = self._key_clients[host] = KeyClient(
                url, self._credential, verify_challenge_resource=False, connection_verify=self._ca
            )
        return client


def measure_naive(environment: dict[str, str], limit: int, results: Connection) -> None:
    """The scanner a user writes first: sync SDKs, every listed key fetched in turn, nothing shared."""
    scanner = _SyncScanner(environment)
    wall, cpu = time.perf_counter(), time.process_time()
    references = usable = scanned = 0
    for keys in scanner.namespaces():
        if scanned >= limit:
            break
        scanned += 1
        for host, name, version in keys:
            key = scanner.key_client(host).get_key(name, version or None)
            references += 1
            usable += bool(key.properties.enabled)
    results.send(
        (
            "done",
            {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "namespaces": scanned,
                "references": references,
                "peak_rss_mib": _peak_mib(),
            },
        )
    )


def measure_competent(environment: dict[str, str], threads: int, results: Connection) -> None:
    """The scanner a competent user writes: sync SDKs, the inventory listed once, each distinct key read once
    on a pool of `threads` threads (the SDK's own retry policy honours Key Vault's 429 Retry-After)."""
    from concurrent.futures import ThreadPoolExecutor

    scanner = _SyncScanner(environment)
    wall, cpu = time.perf_counter(), time.process_time()
    wanted: set[tuple[str, str, str]] = set()
    namespaces = references = 0
    for keys in scanner.namespaces():
        namespaces += 1
        references += len(keys)
        wanted.update((host.lower(), name.lower(), version.lower()) for host, name, version in keys)
    clients = {host: scanner.key_client(host) for host in {host for host, _, _ in wanted}}

    def read(item: tuple[str, str, str]) -> bool:
        host, name, version = item
        return bool(clients[host].get_key(name, version or None).properties.enabled)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        usable = sum(pool.map(read, sorted(wanted)))
    results.send(
        (
            "done",
            {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "namespaces": namespaces,
                "references": references,
                "keys_read": len(wanted),
                "usable": usable,
                "threads": threads,
                "peak_rss_mib": _peak_mib(),
            },
        )
    )


def _in_child(target: Any, args: tuple[Any, ...], stand_in: StandIn, azurite: Azurite | None = None) -> dict[str, Any]:
    """Run `target` in a fresh process, relaying its reset/stats requests to the stand-in (and, with `azurite`,
    adding Azurite's CPU since the reset to the stats)."""
    context = multiprocessing.get_context("spawn")
    azurite_at_reset = 0.0
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(*args, theirs))
    process.start()
    while True:
        while not ours.poll(1.0):
            if not process.is_alive():  # it died before answering: say so instead of waiting for ever
                raise SystemExit(f"{target.__name__} failed in its process (exit code {process.exitcode})")
        kind, payload = ours.recv()
        if kind == "reset":
            stand_in.reset()
            azurite_at_reset = azurite.cpu_seconds() if azurite is not None else 0.0
            ours.send(None)
        elif kind == "stats":
            stats: dict[str, Any] = dict(stand_in.stats())
            if azurite is not None:
                stats["azurite_cpu_ms"] = round((azurite.cpu_seconds() - azurite_at_reset) * 1000)
            ours.send(stats)
        else:
            process.join()
            result: dict[str, Any] = payload
            return result


# --- the run ---------------------------------------------------------------------------------------------


def lower_bound(
    namespaces: int, keys_per_vault: list[int], share: float, latency: float, cpu_floor_s: float = 0.0
) -> dict[str, float]:
    """The tight bound of a poll of this fleet: its fewest requests at the allowed rate or its sequential
    round trips, whichever is longer, then the CPU any poll must spend once everything is read.

    Steady (nothing changed): each vault's keys confirmed from its listing, 25 a page: Σ⌈keys/25⌉ Key Vault
    requests, the busiest vault's pages one after another. First: each distinct key read once. The chain:
    subscriptions, the Resource Graph inventory (⌈namespaces/1000⌉ pages in turn, and no faster than its
    quota of 15 queries per 5 s lets them through), the vaults, then the busiest vault's listing pages
    (steady) or one key read (first)."""
    allowed = 4000 * share / 10.0  # requests a second to one vault of software keys
    pages = [math.ceil(keys / LISTING_PAGE) for keys in keys_per_vault]
    inventory_pages = math.ceil(namespaces / INVENTORY_PAGE)
    windows = math.ceil(inventory_pages / GRAPH_QUOTA.requests)
    inventory_s = max(inventory_pages * latency, (windows - 1) * GRAPH_QUOTA.window + latency)
    steady_trips = 1 + inventory_pages + 1 + max(pages, default=0)
    first_trips = 1 + inventory_pages + 1 + 1
    steady_chain = (steady_trips - inventory_pages) * latency + inventory_s
    first_chain = (first_trips - inventory_pages) * latency + inventory_s
    steady_io = max(max(pages, default=0) / allowed, steady_chain)
    first_io = max(max(keys_per_vault, default=0) / allowed, first_chain)
    return {
        "allowed_per_s": allowed,
        "steady_requests": sum(pages),
        "steady_round_trips": steady_trips,
        "inventory_s": inventory_s,
        "steady_io_s": steady_io,
        "first_requests": sum(keys_per_vault),
        "first_round_trips": first_trips,
        "first_io_s": first_io,
        "cpu_floor_s": cpu_floor_s,
        "steady_s": steady_io + cpu_floor_s,
        "first_s": first_io + cpu_floor_s,
    }


def run_scale(namespaces: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fleet = build_fleet(namespaces)
    path = workdir / f"fleet-{namespaces}.json"
    path.write_text(json.dumps(fleet))
    references = sum(len(n["keys"]) for n in fleet["namespaces"])
    listed = {(r["vault"], r["name"]) for n in fleet["namespaces"] for r in n["keys"]}
    distinct = len(listed)
    keys_per_vault = sorted(Counter(vault for vault, _ in listed).values())
    print(
        f"fleet {namespaces:,} namespaces: {references:,} key references, {distinct:,} distinct keys in {VAULTS} "
        f"vaults; stand-in latency {args.latency * 1000:.0f} ms",
        flush=True,
    )
    stand_in = StandIn(str(path), args.latency)
    try:
        stores = {}
        for store in args.stores:
            if store == "tables":
                settings = args.azurite.settings(f"b{namespaces}")
            else:
                settings = {"KEYHEALTH_SQLITE_PATH": str(workdir / f"state-{namespaces}.sqlite")}
            common = (stand_in.environment, settings, str(args.share), _vault(0))
            azurite = args.azurite if store == "tables" else None
            stand_in.reset()
            stores[store] = _in_child(measure_poll, (*common, ("first", "steady")), stand_in, azurite)
            # Another instance (a fresh process) polls next: what it costs with only the store to go on.
            stand_in.reset()
            fresh = _in_child(measure_poll, (*common, ("fresh",)), stand_in, azurite)
            stores[store]["fresh"] = fresh["fresh"]
            stores[store]["fresh_peak_rss_mib"] = fresh["polls_peak_rss_mib"]
        ours = stores[args.stores[0]]
        competent = None
        if not args.no_competent:
            stand_in.reset()
            competent = _in_child(measure_competent, (stand_in.environment, COMPETENT_THREADS), stand_in)
            competent["stand_in"] = stand_in.stats()
        naive = None
        if namespaces == max(args.scales) and args.naive_namespaces != 0:
            limit = namespaces if args.naive_namespaces < 0 else min(args.naive_namespaces, namespaces)
            stand_in.reset()
            naive = _in_child(measure_naive, (stand_in.environment, limit), stand_in)
            naive["stand_in"] = stand_in.stats()
            naive["extrapolated_wall_s"] = naive["wall_s"] * references / max(naive["references"], 1)
            naive["extrapolated"] = naive["references"] < references
    finally:
        stand_in.stop()
    floor = min(measured["floor"]["cpu_s"] for measured in stores.values())
    bound = lower_bound(namespaces, keys_per_vault, args.share / 100, args.latency, floor)
    return {
        "namespaces": namespaces,
        "references": references,
        "distinct_keys": distinct,
        "busiest_vault_keys": keys_per_vault[-1],
        "ours": ours,  # the first store named (--stores), as before
        "stores": stores,
        "competent": competent,
        "naive": naive,
        "lower_bound": bound,
    }


def _row(label: str, wall: float, cpu: float, stand_in: dict[str, Any], rss: float) -> None:
    azurite = f"{stand_in['azurite_cpu_ms'] / 1000:>15.2f}" if "azurite_cpu_ms" in stand_in else f"{'-':>15}"
    print(
        f"{label:<34}{wall:>9.2f}{cpu:>9.2f}{stand_in['requests']:>10,}{stand_in['keyvault']:>10,}"
        f"{stand_in['throttled']:>6}{rss:>10.0f}{stand_in['cpu_ms'] / 1000:>16.2f}{azurite}"
    )


def _print(scale: dict[str, Any]) -> None:
    naive, competent, bound = scale["naive"], scale["competent"], scale["lower_bound"]
    print(
        f"\n== {scale['namespaces']:,} namespaces ({scale['references']:,} references, {scale['distinct_keys']:,} keys)"
    )
    print(
        f"{'run':<34}{'wall s':>9}{'cpu s':>9}{'requests':>10}{'key reads':>10}{'429s':>6}{'peak MiB':>10}"
        f"{'stand-in cpu s':>16}{'azurite cpu s':>15}"
    )
    for store, measured in scale["stores"].items():
        for label in ("first", "steady", "fresh"):
            run = measured[label]
            rss = measured["fresh_peak_rss_mib" if label == "fresh" else "polls_peak_rss_mib"]
            name = "fresh instance" if label == "fresh" else label
            _row(f"our poll ({name}, {store})", run["wall_s"], run["cpu_s"], run["stand_in"], rss)
        learning = measured.get("learning")
        if learning and learning["polls"]:
            walls = ", ".join(f"{w:.2f}" for w in learning["wall_s"])
            print(
                f"  {store}: Geo-DR pairings read: first poll {measured['first']['pairing_reads']:,}, then "
                f"{learning['polls']} learning polls reading {', '.join(f'{r:,}' for r in learning['pairing_reads'])} "
                f"(wall {walls} s), steady {measured['steady']['pairing_reads']}, fresh instance "
                f"{measured['fresh']['pairing_reads']}"
            )
    if competent is not None:
        label = f"competent scanner ({competent['threads']} threads)"
        _row(label, competent["wall_s"], competent["cpu_s"], competent["stand_in"], competent["peak_rss_mib"])
    if naive is not None:
        _row("naive scanner", naive["wall_s"], naive["cpu_s"], naive["stand_in"], naive["peak_rss_mib"])
        if naive["extrapolated"]:
            print(
                f"  naive timed on {naive['namespaces']:,} namespaces ({naive['references']:,} references); "
                f"for the whole fleet, extrapolated: {naive['extrapolated_wall_s']:.1f} s"
            )
    print(
        f"  tight bound, steady: {bound['steady_s']:.2f} s = max({bound['steady_requests']:,} Key Vault requests "
        f"(Σ⌈keys per vault / 25⌉), the busiest vault's at {bound['allowed_per_s']:.0f}/s; "
        f"{bound['steady_round_trips']} round trips in turn, the inventory's at Resource Graph's quota "
        f"{bound['inventory_s']:.2f} s) {bound['steady_io_s']:.2f} s "
        f"+ CPU floor {bound['cpu_floor_s']:.2f} s (evaluate, render, compare)"
    )
    print(
        f"  tight bound, first: {bound['first_s']:.2f} s = max({bound['first_requests']:,} key reads, the busiest "
        f"vault's at {bound['allowed_per_s']:.0f}/s; {bound['first_round_trips']} round trips) "
        f"{bound['first_io_s']:.2f} s + CPU floor {bound['cpu_floor_s']:.2f} s"
    )
    for store, measured in scale["stores"].items():
        first, steady, fresh = (measured[label]["wall_s"] for label in ("first", "steady", "fresh"))
        versus = [f"steady {steady / bound['steady_s']:.1f}x the bound", f"first {first / bound['first_s']:.1f}x"]
        if competent is not None:
            versus.append(
                f"competent scanner {competent['wall_s'] / steady:.1f}x our steady, "
                f"{competent['wall_s'] / first:.1f}x our first"
            )
        if naive is not None:
            versus.append(f"naive {naive['extrapolated_wall_s'] / steady:.0f}x our steady")
        versus.append(f"fresh instance {fresh / steady:.2f}x steady")
        print(f"  {store}: " + "; ".join(versus))
        event = measured["event"]
        print(
            f"  event for the shared key ({store}): {event['namespaces']:,} namespaces re-judged and recorded in "
            f"{event['wall_s']:.2f} s ({event['stand_in']['keyvault']} key reads, outcome {event['outcome']})"
        )
    if "tables" in scale["stores"] and "sqlite" in scale["stores"]:
        ratio = scale["stores"]["tables"]["steady"]["wall_s"] / scale["stores"]["sqlite"]["steady"]["wall_s"]
        print(f"  steady poll on Table Storage: {ratio:.2f}x the SQLite steady poll")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1000,10000", help="fleet sizes in namespaces (comma-separated)")
    parser.add_argument("--latency", type=float, default=0.020, help="seconds added to every stand-in answer")
    parser.add_argument("--share", type=float, default=50.0, help="KEYHEALTH_KEYVAULT_SHARE for our poll (percent)")
    parser.add_argument(
        "--naive-namespaces",
        type=int,
        default=1000,
        help="time the naive scanner on this many namespaces of the largest fleet and extrapolate "
        "(-1: the whole fleet; 0: skip it)",
    )
    parser.add_argument(
        "--stores",
        default="sqlite,tables",
        help="state stores to poll on, in order (sqlite; tables: Table Storage in an Azurite the benchmark starts)",
    )
    parser.add_argument(
        "--large", action="store_true", help="add the 100,000-namespace fleet (50,000 keys; about half an hour)"
    )
    parser.add_argument("--no-competent", action="store_true", help="skip the competent scanner (16 threads)")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each of our polls into this folder")
    parser.add_argument("--json", type=Path, default=Path("fleet-bench.json"), help="where to write the figures")
    args = parser.parse_args(argv)
    args.scales = sorted({int(s) for s in args.scales.split(",")} | ({100_000} if args.large else set()))
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["KEYHEALTH_BENCH_PROFILE"] = str(args.profile.resolve())  # the children inherit it
    unknown = sorted(set(args.stores) - {"sqlite", "tables"})
    if unknown or not args.stores:
        parser.error(f"--stores: expected sqlite and/or tables, got {args.stores}")
    with tempfile.TemporaryDirectory(prefix="keyhealth-fleet-") as workdir, contextlib.ExitStack() as stack:
        args.azurite = stack.enter_context(Azurite(Path(workdir))) if "tables" in args.stores else None
        scales = [run_scale(n, args, Path(workdir)) for n in args.scales]
    for scale in scales:
        _print(scale)
    if len(scales) > 1:
        base = scales[0]
        print("\nlinearity (steady poll, seconds per 1,000 namespaces):")
        for scale in scales:
            per = scale["ours"]["steady"]["wall_s"] / scale["namespaces"] * 1000
            ratio = per / (base["ours"]["steady"]["wall_s"] / base["namespaces"] * 1000)
            print(f"  {scale['namespaces']:>7,}: {per:.3f} s ({ratio:.2f}x the smallest fleet's)")
        # A fixed part (the round-trip chain) weighs most on the smallest fleet; the slope between sizes is
        # the cost each further 1,000 namespaces add.
        print("marginal cost (steady poll, seconds per further 1,000 namespaces):")
        for smaller, larger in itertools.pairwise(scales):
            extra = larger["ours"]["steady"]["wall_s"] - smaller["ours"]["steady"]["wall_s"]
            per = extra / (larger["namespaces"] - smaller["namespaces"]) * 1000
            print(f"  {smaller['namespaces']:>7,} -> {larger['namespaces']:,}: {per:.3f} s")
    args.json.write_text(
        json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "json"}, "scales": scales}, indent=2, default=str
        )
    )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
