"""Benchmark: predict and judge a synthetic fleet of 100,000 namespaces over a one-year horizon.

Run it with `make bench` or `.venv/bin/python bench/predict_bench.py [--namespaces N] [--seed S]`.

The fleet is built in memory and deterministically from the seed: about 20 vaults; 3 key references per
namespace, mostly to keys of its own, some to keys shared across namespaces; each key with 1-3 versions,
most of which expire during the year; and a timeline with a few changes per namespace in roughly the
proportions a real fleet sees them: rotations (new_version) for most expiring keys, occasional
disabled or extended versions, soft-deletes (mostly recovered), purges, access removals (some restored)
and one short vault outage.

Printed: the time to build the scenario; then `evaluate` (`monitor.domain.fleet`: prediction and
findings, on one core) as `keyhealth simulate` runs it, inside `monitor.entry.runtime.batch_gc`, timed in
its two halves (World build + prediction, then findings) and in total, wall and CPU, with the time the
cyclic garbage collector took (gc callbacks) and the peak RSS. Options: --default-gc evaluates with
Python's default collector instead; --verify N holds the usable intervals and assessments of N
sampled namespaces to `assess`, point by point; --digest prints a hash of every prediction and finding,
to compare runs of two versions of the code; --profile N prints the top N functions of a cProfile run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import pstats
import random
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, judge
from monitor.domain.model import (
    Change,
    DeleteKey,
    DeleteVault,
    Key,
    KeyRef,
    KeyVersion,
    Namespace,
    NamespaceIdentity,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    Scenario,
    SetAccess,
    Snapshot,
    UpdateVersion,
    Vault,
)
from monitor.domain.prediction import Status, predict_scenario, usable_intervals, usable_intervals_by_points
from monitor.domain.usability import assess
from monitor.domain.world import World
from monitor.entry.runtime import batch_gc

NOW = datetime(2026, 11, 22, tzinfo=UTC)
HORIZON = datetime(2027, 11, 22, tzinfo=UTC)
YEAR = timedelta(days=365)
VAULTS = 20
SHARED_KEYS_PER_VAULT = 20
USER_ASSIGNED_IDENTITIES = 200
KEYS_PER_NAMESPACE = 3
GRANT = frozenset({"get", "wrapKey", "unwrapKey"})
DEFAULT_SEED = 20261122


@dataclass
class _KeyPlan:
    """A key being generated: its versions as of `now`, and the principals that must reach its vault."""

    vault: str
    name: str
    versions: list[KeyVersion] = field(default_factory=list)


class FleetBuilder:
    """Builds one synthetic scenario from a seeded random generator."""

    def __init__(self, namespaces: int, seed: int) -> None:
        self.count = namespaces
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible benchmark fleet, not a secret
        self.vault_uris = [f"https://kv-bench-{index:02d}.vault.azure.net" for index in range(VAULTS)]
        self.access: list[dict[str, frozenset[str]]] = [{} for _ in range(VAULTS)]
        self.keys: list[_KeyPlan] = []
        self.changes: list[Change] = []
        self.version_counter = 0

    # --- random helpers -----------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def _version_id(self) -> str:
        self.version_counter += 1
        return f"{self.version_counter:08x}{self.rng.getrandbits(96):024x}"

    def _instant(self, start: datetime, end: datetime) -> datetime:
        """A random whole minute in [start, end)."""
        minutes = max(1, int((end - start).total_seconds() // 60))
        return start + timedelta(minutes=self.rng.randrange(minutes))

    def _key_ops(self) -> tuple[str, ...] | None:
        roll = self.rng.random()
        if roll < 0.80:
            return None
        if roll < 0.995:
            return ("encrypt", "decrypt", "wrapKey", "unwrapKey")
        return ("encrypt", "decrypt")  # rare misconfiguration: key-ops-missing

    def _version(self, created: datetime) -> KeyVersion:
        rng = self.rng
        exp = created + YEAR if rng.random() < 0.75 else None
        return KeyVersion(
            version=self._version_id(),
            created=created,
            enabled=rng.random() >= 0.003,
            nbf=created if rng.random() < 0.05 else None,
            exp=exp,
            key_ops=self._key_ops(),
            kty="RSA",
            key_size=2048,
        )

    # --- keys and their changes ----------------------------------------------------------------------

    def _new_key(self, vault: int, name: str) -> _KeyPlan:
        rng = self.rng
        plan = _KeyPlan(self.vault_uris[vault], name)
        count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        latest = self._instant(NOW - YEAR, NOW - timedelta(days=1))
        for age in range(count - 1, -1, -1):
            plan.versions.append(self._version(latest - age * YEAR))
        self.keys.append(plan)
        self._plan_changes(plan)
        return plan

    def _current_at(self, versions: list[KeyVersion], t: datetime) -> KeyVersion:
        return max((v for v in versions if v.created <= t), key=lambda v: v.created)

    def _plan_changes(self, plan: _KeyPlan) -> None:
        rng = self.rng
        vault, name = plan.vault, plan.name
        timeline = list(plan.versions)  # versions including rotations, to know the current one later
        latest = plan.versions[-1]
        # Rotation: most keys that expire within the year are rotated a few weeks before they do.
        if latest.exp is not None and latest.exp < HORIZON and rng.random() < 0.6:
            at = max(NOW + timedelta(minutes=1), latest.exp - timedelta(days=rng.randint(3, 45)))
            rotated = KeyVersion(
                version=self._version_id(),
                created=at,
                enabled=rng.random() >= 0.02,  # a rotation that produced a disabled version
                nbf=at + timedelta(days=1) if rng.random() < 0.01 else None,
                exp=at + YEAR,
                key_ops=self._key_ops(),
                kty="RSA",
                key_size=2048,
            )
            self.changes.append(NewVersion(at=at, vault=vault, key=name, version=rotated))
            timeline.append(rotated)
        roll = rng.random()
        if roll < 0.02:  # someone disables the current version; half the time it is re-enabled later
            at = self._instant(NOW, HORIZON)
            target = self._current_at(timeline, at)
            self.changes.append(UpdateVersion(at=at, vault=vault, key=name, enabled=False))
            if rng.random() < 0.5:
                back = at + timedelta(minutes=rng.randint(2, 60 * 24 * 3))
                self.changes.append(UpdateVersion(at=back, vault=vault, key=name, version=target.version, enabled=True))
        elif roll < 0.05:  # the current version's expiry is extended
            at = self._instant(NOW, HORIZON)
            target = self._current_at(timeline, at)
            exp = (target.exp or at) + timedelta(days=rng.randint(30, 400))
            self.changes.append(UpdateVersion(at=at, vault=vault, key=name, version=target.version, exp=exp))
        elif roll < 0.06:  # soft-deleted; mostly recovered within minutes to days
            at = self._instant(NOW, HORIZON)
            self.changes.append(DeleteKey(at=at, vault=vault, key=name))
            if rng.random() < 0.7:
                back = at + timedelta(minutes=rng.randint(1, 60 * 24 * 10))
                self.changes.append(RecoverKey(at=back, vault=vault, key=name))
        elif roll < 0.0605:  # deleted, then purged for good
            at = self._instant(NOW, HORIZON - timedelta(days=2))
            self.changes.append(DeleteKey(at=at, vault=vault, key=name))
            self.changes.append(PurgeKey(at=at + timedelta(days=1), vault=vault, key=name))

    # --- namespaces ------------------------------------------------------------------------------------

    def build(self) -> Scenario:
        rng = self.rng
        user_assigned = [
            (
                f"/subscriptions/{self._uuid()}/resourceGroups/rg-identities/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/uami-{index:03d}",
                self._uuid(),
            )
            for index in range(USER_ASSIGNED_IDENTITIES)
        ]
        shared = [
            [self._new_key(vault, f"shared-{index:02d}") for index in range(SHARED_KEYS_PER_VAULT)]
            for vault in range(VAULTS)
        ]
        subscriptions = [self._uuid() for _ in range(50)]
        namespaces = []
        for number in range(self.count):
            name = f"sb-{number:06d}"
            principal = self._uuid() if rng.random() >= 0.002 else None  # a few lack a system identity
            uami = rng.choice(user_assigned) if rng.random() < 0.2 else None
            identity = NamespaceIdentity(
                principal_id=principal,
                user_assigned={uami[0]: uami[1]} if uami is not None else {},
            )
            refs = []
            for slot, vault in enumerate(rng.sample(range(VAULTS), KEYS_PER_NAMESPACE)):
                plan = rng.choice(shared[vault]) if rng.random() < 0.05 else self._new_key(vault, f"{name}-k{slot}")
                version = plan.versions[-1].version if rng.random() < 0.03 else None  # pinned
                acting = uami if uami is not None and rng.random() < 0.5 else None
                refs.append(KeyRef(plan.vault, plan.name, version, acting[0] if acting else None))
                self._grant(vault, acting[1] if acting else principal, number)
            namespaces.append(
                Namespace(
                    id=f"/subscriptions/{subscriptions[number % len(subscriptions)]}/resourceGroups/"
                    f"rg-{number % 500:03d}/providers/Microsoft.ServiceBus/namespaces/{name}",
                    name=name,
                    keys=tuple(refs),
                    identity=identity,
                    tags={"owner": f"team-{number % 97:02d}"},
                )
            )
        self._vault_outage()
        vaults = tuple(
            Vault(
                uri=uri,
                soft_delete=index != 7,
                purge_protection=index not in (7, 13),
                rbac=index % 2 == 1,
                access=self.access[index],
            )
            for index, uri in enumerate(self.vault_uris)
        )
        keys = tuple(Key(vault=k.vault, name=k.name, versions=tuple(k.versions)) for k in self.keys)
        return Scenario(
            now=NOW,
            horizon=HORIZON,
            snapshot=Snapshot(vaults=vaults, keys=keys, namespaces=tuple(namespaces)),
            changes=tuple(self.changes),
        )

    def _grant(self, vault: int, principal: str | None, number: int) -> None:
        """Grant the principal a reference acts as on its vault; occasionally lose that grant later."""
        if principal is None:
            return
        rng = self.rng
        access = self.access[vault]
        if principal not in access:  # a user-assigned identity is granted once per vault
            access[principal] = GRANT if rng.random() >= 0.002 else frozenset({"get", "wrapKey"})
        if rng.random() < 0.003:  # access removed during the year; restored half the time
            uri = self.vault_uris[vault]
            at = self._instant(NOW, HORIZON)
            self.changes.append(SetAccess(at=at, vault=uri, principal=principal, permissions=frozenset()))
            if rng.random() < 0.5:
                back = at + timedelta(minutes=rng.randint(1, 60 * 24 * 7))
                self.changes.append(SetAccess(at=back, vault=uri, principal=principal, permissions=GRANT))

    def _vault_outage(self) -> None:
        """One vault is deleted by mistake and recovered three hours later."""
        uri = self.vault_uris[3]
        at = self._instant(NOW, HORIZON - timedelta(days=1))
        self.changes.append(DeleteVault(at=at, vault=uri))
        self.changes.append(RecoverVault(at=at + timedelta(hours=3), vault=uri))


def _peak_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _GcTimer:
    """Counts the garbage collector's collections per generation, and the time they take."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started

    def __str__(self) -> str:
        parts = [f"gen{g} {self.collections[g]:,} in {self.seconds[g]:.2f} s" for g in range(3)]
        return f"{sum(self.seconds):.2f} s ({', '.join(parts)})"


def _verify(scenario: Scenario, report: FleetReport, count: int, seed: int) -> tuple[int, int, int]:
    """Hold sampled namespaces to point-by-point evaluation with `assess`: each reference's usable
    intervals, and the assessments the prediction reports now and at the first revocation.

    Samples `count` namespaces at random, and as many among those not healthy or at risk, which take
    the other paths. Returns (namespaces checked, of them not healthy or at risk, mismatches).
    """
    world = World(scenario.snapshot, scenario.changes)
    now, horizon = scenario.now, scenario.effective_horizon
    namespaces = scenario.snapshot.namespaces
    predictions = {item.prediction.namespace.id: item.prediction for item in report.namespaces}
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    at_risk = [
        n for n in namespaces if predictions[n.id].status_now is not Status.HEALTHY or predictions[n.id].stretches
    ]
    sample = rng.sample(namespaces, min(count, len(namespaces)))
    sample += rng.sample(at_risk, min(count, len(at_risk)))
    mismatches = 0
    for namespace in sample:
        prediction = predictions[namespace.id]
        first = prediction.stretches[0].start if prediction.stretches else None
        for position, ref in enumerate(namespace.keys):
            fast = usable_intervals(world, namespace, ref, now, horizon)
            if fast != usable_intervals_by_points(world, namespace, ref, now, horizon):
                mismatches += 1
                print(f"MISMATCH {namespace.name} {ref.url}: {fast}", file=sys.stderr)
            now_assessment = prediction.assessments_now[position]
            if now_assessment != assess(world, namespace, ref, now):
                mismatches += 1
                print(f"MISMATCH {namespace.name} {ref.url} now: {now_assessment}", file=sys.stderr)
            at_revocation = prediction.assessments_at_revocation
            if first is not None and (
                at_revocation is None or at_revocation[position] != assess(world, namespace, ref, first)
            ):
                mismatches += 1
                print(f"MISMATCH {namespace.name} {ref.url} at {first}: {at_revocation}", file=sys.stderr)
    return len(sample), min(count, len(at_risk)), mismatches


def _digest(report: FleetReport) -> str:
    """A hash of every namespace's prediction and findings, independent of object identity."""
    digest = hashlib.sha256()
    for item in report.namespaces:
        prediction = item.prediction
        fields = (
            prediction.namespace.id,
            prediction.status_now.value,
            prediction.usable_keys_now,
            prediction.revoked_at_earliest,
            prediction.revoked_by,
            prediction.usable_intervals,
            prediction.stretches,
            [(a.reasons, a.version) for a in prediction.assessments_now],
            [(a.reasons, a.version) for a in prediction.assessments_at_revocation or ()],
            [(f.code.value, f.severity.label, f.key, f.message, f.version, f.at) for f in item.findings],
        )
        digest.update(repr(fields).encode())
    return digest.hexdigest()


def _summary(report: FleetReport) -> tuple[Counter[str], Counter[str], int, int]:
    statuses: Counter[str] = Counter()
    worst: Counter[str] = Counter()
    at_risk = certain = 0
    for item in report.namespaces:
        statuses[item.prediction.status_now.value] += 1
        worst[item.worst.label if item.worst is not None else "none"] += 1
        at_risk += item.prediction.revoked_at_earliest is not None
        certain += item.prediction.revoked_by is not None
    return statuses, worst, at_risk, certain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--namespaces", type=int, default=100_000, help="namespaces in the fleet (default 100000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--profile", type=int, metavar="N", default=0, help="profile evaluate; print the top N")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="evaluate with Python's default collector, not batch_gc as the CLI runs it",
    )
    parser.add_argument("--verify", type=int, metavar="N", default=0, help="check N namespaces against assess")
    parser.add_argument("--digest", action="store_true", help="print a hash of all predictions and findings")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    scenario = FleetBuilder(args.namespaces, args.seed).build()
    build_seconds = time.perf_counter() - started
    build_peak = _peak_mib()

    snapshot = scenario.snapshot
    references = sum(len(n.keys) for n in snapshot.namespaces)
    distinct_keys = len({r.key_id for n in snapshot.namespaces for r in n.keys})
    print(f"namespaces:        {len(snapshot.namespaces):,}")
    print(f"key references:    {references:,}")
    print(f"distinct keys:     {distinct_keys:,} referenced ({len(snapshot.keys):,} in snapshot)")
    print(f"vaults:            {len(snapshot.vaults)}")
    ops = Counter(c.op for c in scenario.changes)
    print(f"changes:           {len(scenario.changes):,} ({', '.join(f'{op} {n:,}' for op, n in sorted(ops.items()))})")
    print(f"horizon:           {scenario.now:%Y-%m-%d} .. {scenario.effective_horizon:%Y-%m-%d}")
    print(f"build scenario:    {build_seconds:.2f} s wall (peak RSS {build_peak:.0f} MiB)")

    profiler = cProfile.Profile() if args.profile else None
    gc_timer = _GcTimer()
    gc.callbacks.append(gc_timer)
    # What `keyhealth simulate` runs, `evaluate(scenario, thresholds)`, in its two halves so that each is timed.
    collector = contextlib.nullcontext() if args.default_gc else batch_gc()
    wall = time.perf_counter()
    cpu = time.process_time()
    with collector:
        if profiler is not None:
            profiler.enable()
        world, predictions = predict_scenario(scenario)
        predicted = time.perf_counter()
        report = judge(scenario, world, predictions, Thresholds())
        judged = time.perf_counter()
        if profiler is not None:
            profiler.disable()
        del world, predictions
    cpu_seconds = time.process_time() - cpu
    wall_seconds = time.perf_counter() - wall
    gc.callbacks.remove(gc_timer)

    print(f"world + predict:   {predicted - wall:.2f} s wall")
    print(f"findings:          {judged - predicted:.2f} s wall")
    print(f"evaluate:          {wall_seconds:.2f} s wall, {cpu_seconds:.2f} s CPU")
    collector_mode = "Python's default collector" if args.default_gc else "batch_gc, as the CLI runs it"
    print(f"  of which gc:     {gc_timer} [{collector_mode}]")
    print(f"peak RSS:          {_peak_mib():.0f} MiB")
    statuses, worst, at_risk, certain = _summary(report)
    print(f"status now:        {', '.join(f'{k} {v:,}' for k, v in sorted(statuses.items()))}")
    print(f"worst severity:    {', '.join(f'{k} {v:,}' for k, v in sorted(worst.items()))}")
    print(f"revocation:        {at_risk:,} possible within the horizon, {certain:,} certain")
    if args.digest:
        print(f"digest:            {_digest(report)}")
    if args.verify:
        checked, risky, mismatches = _verify(scenario, report, args.verify, args.seed)
        outcome = f"{checked:,} namespaces ({risky:,} not healthy or at risk) against assess: {mismatches} mismatches"
        print(f"verify:            {outcome}")
        if mismatches:
            return 1
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
