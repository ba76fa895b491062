"""Benchmark: one poll of a large fleet against the local Azure stand-in, beside a naive scanner and the lower bound.

Run it with `make bench-fleet` or `.venv/bin/python -m bench.fleet_bench [options]`.

The fleet (deterministic): N namespaces in 10 subscriptions, each listing 3 keys in 3 different vaults
(3N key references) through one user-assigned identity, N/2 distinct software RSA keys spread over 20
vaults, and one key listed by N/10 namespaces (1,000 at N = 10,000). The stand-in serves it over HTTPS
from its own process (so it has a core of its own) with 20 ms added to every answer and Key Vault's rate
limit enforced (4,000 requests per 10 s per vault, then 429 with Retry-After).

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
import itertools
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

NOW = "2026-11-22T00:00:00Z"
VAULTS = 20
SUBSCRIPTIONS = 10
IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-identity/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-servicebus-cmk"
)
PRINCIPAL = "00000000-0000-0000-0000-00000000c0de"
SHARED_KEY = "sb-shared"


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
        documents.append(
            {
                "id": f"/subscriptions/{subscription}/resourceGroups/rg-{n % 50:02d}/providers/"
                f"Microsoft.ServiceBus/namespaces/{name}",
                "name": name,
                "identity": {"principal_id": None, "user_assigned": {IDENTITY: PRINCIPAL}},
                "keys": refs,
            }
        )
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
    environment: dict[str, str], store: dict[str, str], share: str, shared_key_vault: str, results: Connection
) -> None:
    """Two polls (first, then steady state), then one event for the shared key, on the store `store` names."""
    os.environ.update(environment)
    from monitor.app.events import handle_event
    from monitor.app.poll import poll
    from monitor.entry.bootstrap import build_monitor
    from monitor.entry.config import Settings
    from monitor.formats.events import parse_event

    state_dir = tempfile.mkdtemp(prefix="keyhealth-bench-")
    settings = Settings.from_environment(
        {
            **os.environ,
            "KEYHEALTH_SQLITE_PATH": str(Path(state_dir) / "state.sqlite"),
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
        try:
            for label in ("first", "steady"):
                results.send(("reset", None))
                results.recv()
                wall, cpu = time.perf_counter(), time.process_time()
                result = await poll(monitor, now=now)
                measured[label] = {
                    "wall_s": time.perf_counter() - wall,
                    "cpu_s": time.process_time() - cpu,
                    "namespaces": len(result.report.namespaces) if result.report else 0,
                    "statuses": dict(Counter(n.prediction.status_now.value for n in result.report.namespaces))
                    if result.report
                    else {},
                }
                results.send(("stats", None))
                measured[label]["stand_in"] = results.recv()
            (event,) = [e for e in (parse_event(item) for item in event_payload)]
            results.send(("reset", None))
            results.recv()
            wall = time.perf_counter()
            outcome = await handle_event(monitor, event, now=now)  # type: ignore[arg-type]
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


def measure_naive(environment: dict[str, str], limit: int, results: Connection) -> None:
    """The scanner a user writes first: sync SDKs, every listed key fetched in turn, nothing shared."""
    from azure.keyvault.keys import KeyClient
    from azure.mgmt.resource.subscriptions import SubscriptionClient
    from azure.mgmt.servicebus import ServiceBusManagementClient

    from monitor.sandbox import StaticTokenCredential

    arm, vaults_at, ca = (
        environment["KEYHEALTH_ARM_ENDPOINT"],
        environment["KEYHEALTH_KEYVAULT_ENDPOINT"],
        environment["KEYHEALTH_CA_BUNDLE"],
    )
    credential = StaticTokenCredential()
    clients: dict[str, KeyClient] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    references = usable = scanned = 0
    subscriptions = SubscriptionClient(credential, base_url=arm, connection_verify=ca)
    for subscription in subscriptions.subscriptions.list():
        servicebus = ServiceBusManagementClient(
            credential, subscription.subscription_id or "", base_url=arm, connection_verify=ca
        )
        for namespace in servicebus.namespaces.list():
            if scanned >= limit:
                break
            scanned += 1
            encryption = namespace.properties.encryption if namespace.properties else None
            for entry in (encryption.key_vault_properties or []) if encryption else []:
                host = (entry.key_vault_uri or "").split("//", 1)[-1].rstrip("/")
                client = clients.get(host)
                if client is None:
                    client = clients[host] = KeyClient(
                        f"{vaults_at}/{host}", credential, verify_challenge_resource=False, connection_verify=ca
                    )
                key = client.get_key(entry.key_name or "", entry.key_version or None)
                references += 1
                usable += bool(key.properties.enabled)
        if scanned >= limit:
            break
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


def _in_child(target: Any, args: tuple[Any, ...], stand_in: StandIn) -> dict[str, Any]:
    """Run `target` in a fresh process, relaying its reset/stats requests to the stand-in."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(*args, theirs))
    process.start()
    while True:
        kind, payload = ours.recv()
        if kind == "reset":
            stand_in.reset()
            ours.send(None)
        elif kind == "stats":
            ours.send(stand_in.stats())
        else:
            process.join()
            result: dict[str, Any] = payload
            return result


# --- the run ---------------------------------------------------------------------------------------------


def lower_bound(busiest_vault_requests: int, share: float, latency: float) -> dict[str, float]:
    """The larger of the busiest vault's requests at the allowed rate and one round-trip chain.

    The requests are the fleet's, not our poll's: one read of each distinct key the busiest vault holds.
    A steady poll that confirms unchanged keys from the vault's listing makes fewer (see the table)."""
    allowed = 4000 * share / 10.0  # requests a second to one vault of software keys
    # subscriptions -> Resource Graph -> vaults of a subscription -> deleted vaults -> one key read
    chain = 5 * latency
    throughput = busiest_vault_requests / allowed
    return {"throughput_s": throughput, "chain_s": chain, "bound_s": max(throughput, chain), "allowed_per_s": allowed}


def run_scale(namespaces: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fleet = build_fleet(namespaces)
    path = workdir / f"fleet-{namespaces}.json"
    path.write_text(json.dumps(fleet))
    references = sum(len(n["keys"]) for n in fleet["namespaces"])
    listed = {(r["vault"], r["name"]) for n in fleet["namespaces"] for r in n["keys"]}
    distinct = len(listed)
    busiest_vault_keys = max(Counter(vault for vault, _ in listed).values())
    print(
        f"fleet {namespaces:,} namespaces: {references:,} key references, {distinct:,} distinct keys in {VAULTS} "
        f"vaults; stand-in latency {args.latency * 1000:.0f} ms",
        flush=True,
    )
    stand_in = StandIn(str(path), args.latency)
    try:
        stores = {}
        for store in args.stores:
            stand_in.reset()
            settings = args.azurite.settings(f"b{namespaces}") if store == "tables" else {}
            stores[store] = _in_child(
                measure_poll, (stand_in.environment, settings, str(args.share), _vault(0)), stand_in
            )
        ours = stores[args.stores[0]]
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
    bound = lower_bound(busiest_vault_keys, args.share / 100, args.latency)
    return {
        "namespaces": namespaces,
        "references": references,
        "distinct_keys": distinct,
        "busiest_vault_keys": busiest_vault_keys,
        "ours": ours,  # the first store named (--stores), as before
        "stores": stores,
        "naive": naive,
        "lower_bound": bound,
    }


def _print(scale: dict[str, Any]) -> None:
    ours, naive, bound = scale["ours"], scale["naive"], scale["lower_bound"]
    print(
        f"\n== {scale['namespaces']:,} namespaces ({scale['references']:,} references, {scale['distinct_keys']:,} keys)"
    )
    print(
        f"{'run':<28}{'wall s':>9}{'cpu s':>9}{'requests':>10}{'key reads':>10}{'429s':>6}{'peak MiB':>10}"
        f"{'stand-in cpu s':>16}"
    )
    for store, measured in scale["stores"].items():
        for label in ("first", "steady"):
            run = measured[label]
            s = run["stand_in"]
            print(
                f"{'our poll (' + label + ', ' + store + ')':<28}{run['wall_s']:>9.2f}{run['cpu_s']:>9.2f}"
                f"{s['requests']:>10,}{s['keyvault']:>10,}{s['throttled']:>6}{measured['peak_rss_mib']:>10.0f}"
                f"{s['cpu_ms'] / 1000:>16.2f}"
            )
    if naive is not None:
        s = naive["stand_in"]
        print(
            f"{'naive scanner':<28}{naive['wall_s']:>9.2f}{naive['cpu_s']:>9.2f}{s['requests']:>10,}"
            f"{s['keyvault']:>10,}{s['throttled']:>6}{naive['peak_rss_mib']:>10.0f}{s['cpu_ms'] / 1000:>16.2f}"
        )
        if naive["extrapolated"]:
            print(
                f"  naive timed on {naive['namespaces']:,} namespaces ({naive['references']:,} references); "
                f"for the whole fleet, extrapolated: {naive['extrapolated_wall_s']:.1f} s"
            )
        print(f"  speed-up over naive: {naive['extrapolated_wall_s'] / ours['steady']['wall_s']:.1f}x")
    print(
        f"  lower bound {bound['bound_s']:.2f} s (busiest vault's {scale['busiest_vault_keys']:,} keys read once "
        f"each at {bound['allowed_per_s']:.0f}/s = {bound['throughput_s']:.2f} s; round-trip chain "
        f"{bound['chain_s']:.2f} s); our steady poll is {ours['steady']['wall_s'] / bound['bound_s']:.1f}x it, "
        f"the first {ours['first']['wall_s'] / bound['bound_s']:.1f}x"
    )
    print(
        f"  steady poll: {ours['steady']['stand_in']['busiest_vault']:,} requests to the busiest vault (unchanged "
        "keys confirmed from its key listing, 25 a request)"
    )
    for store, measured in scale["stores"].items():
        event = measured["event"]
        print(
            f"  event for the shared key ({store}): {event['namespaces']:,} namespaces re-judged and recorded in "
            f"{event['wall_s']:.2f} s ({event['stand_in']['keyvault']} key reads, outcome {event['outcome']})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1000,3000,10000", help="fleet sizes in namespaces (comma-separated)")
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
    parser.add_argument("--json", type=Path, default=Path("fleet-bench.json"), help="where to write the figures")
    args = parser.parse_args(argv)
    args.scales = sorted(int(s) for s in args.scales.split(","))
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
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
