"""Hypothesis strategies for small random scenarios: whole-second times within a few hours of `now`.

Strategies are built once at import and choices are drawn as indexes: building strategy objects
per draw costs more than the predictions the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from hypothesis import strategies as st

from monitor.domain.errors import ScenarioError
from monitor.domain.model import (
    KEEP,
    BlindScope,
    BlindSpot,
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
    key_url,
    name_id,
)
from monitor.domain.world import World

T = TypeVar("T")

BASE = datetime(2026, 11, 22, tzinfo=UTC)

VAULT_URIS = (
    "https://kv-a.vault.azure.net",
    "https://kv-b.vault.azure.net",
    "https://hsm-c.managedhsm.azure.net",
)
KEY_NAMES = ("k1", "k2")
SNAPSHOT_VERSIONS = ("v0", "v1", "v2")
NEW_VERSIONS = ("n0", "n1", "n2")
GOOD_REF_VERSIONS = (None, None, None, None, None, None, "v0", "v1")  # every snapshot key has a v0, most a v1
BAD_REF_VERSIONS = ("v2", "n0", "v9")  # may not exist (yet); v9 never does
REF_VERSIONS = (*GOOD_REF_VERSIONS, *BAD_REF_VERSIONS)

SYSTEM_PRINCIPALS = ("p-sys-a", "p-sys-b")
UA_X = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ua-x"
UA_Y = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ua-y"
USER_ASSIGNED = {UA_X: "p-ua-x", UA_Y: "p-ua-y"}
PRINCIPALS = (*SYSTEM_PRINCIPALS, "p-ua-x", "p-ua-y")
REF_IDENTITIES = (None, None, UA_X, UA_Y)

FULL = frozenset({"get", "wrapKey", "unwrapKey"})
KEY_SCOPE_PERMISSIONS: tuple[frozenset[str], ...] = (
    frozenset({"wrapKey", "unwrapKey"}),
    FULL,
    frozenset({"get"}),
    frozenset(),
)
ENOUGH_PERMISSIONS = (FULL, FULL, frozenset({"all"}), frozenset({"GET", "WRAPKEY", "UNWRAPKEY", "list"}))
PERMISSION_NAMES = ("get", "wrapKey", "unwrapKey", "list", "all")
GOOD_KEY_OPS = (None, None, ("wrapKey", "unwrapKey"), ("encrypt", "WRAPKEY", "unwrapkey"))
BAD_KEY_OPS = (("unwrapKey",), ("encrypt", "decrypt"), ())
OPS = (
    "new_version",
    "update_version",
    "delete_key",
    "recover_key",
    "purge_key",
    "set_access",
    "delete_vault",
    "recover_vault",
)

_INDEXES: dict[int, st.SearchStrategy[int]] = {}
_BOOLEANS = st.booleans()
_DELTA = st.integers(-400, 400)
_PAST = st.integers(1, 3 * 3600)
_BLIP_SHORT = st.integers(1, 299)
_BLIP = st.one_of(st.integers(1, 400), st.sampled_from([299, 300, 301]))  # around the poll interval
_MICROSECONDS = st.integers(0, 999_999)
_DAY_SECOND = st.integers(0, 86399)
_PERMISSION_SUBSET = st.frozensets(st.sampled_from(PERMISSION_NAMES), max_size=4)


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """One of `options` (earlier ones are what a failing example shrinks towards)."""
    size = len(options)
    if size not in _INDEXES:
        _INDEXES[size] = st.integers(0, size - 1)
    return options[draw(_INDEXES[size])]


def chance(draw: st.DrawFn, numerator: int, denominator: int) -> bool:
    """True with probability numerator/denominator (shrinks towards False)."""
    return pick(draw, range(denominator)) >= denominator - numerator


def spelled_vault(draw: st.DrawFn, uri: str) -> str:
    """The vault URI as written, or a spelling that compares equal (case, trailing slash)."""
    return pick(draw, (uri, uri, uri + "/", uri.upper().replace("HTTPS://", "https://")))


def spelled_name(draw: st.DrawFn, name: str) -> str:
    """A name as written, or in upper case (names compare case-insensitively)."""
    return pick(draw, (name, name, name.upper()))


def permissions(draw: st.DrawFn, faults: int) -> frozenset[str]:
    """Enough to use a key, except for about one in `faults`."""
    if chance(draw, 1, faults):
        return pick(draw, (frozenset(), frozenset({"get", "wrapKey"}), frozenset({"list"}))) | draw(_PERMISSION_SUBSET)
    return pick(draw, ENOUGH_PERMISSIONS)


def ref_identity(ref: KeyRef) -> tuple[str, str, str | None, str | None]:
    """What makes two references of one namespace duplicates."""
    return (*ref.key_id, name_id(ref.version) if ref.version else None, name_id(ref.identity) if ref.identity else None)


class Clock:
    """Draws instants clustered around a few anchors, so near-coincident events are common."""

    def __init__(self, draw: st.DrawFn, now: datetime, horizon: datetime, *, fractional: bool = False) -> None:
        self.draw = draw
        self.now = now
        self.fractional = fractional
        self.span = span = int((horizon - now).total_seconds())
        self.anchors = draw(st.lists(st.integers(-3600, span + 600), min_size=1, max_size=4))
        if chance(draw, 1, 3):  # trouble starting just before the horizon: a stretch cut short by it
            self.anchors.append(span - 150)

    def _at(self, seconds: int) -> datetime:
        micro = self.draw(_MICROSECONDS) if self.fractional and chance(self.draw, 1, 2) else 0
        return self.now + timedelta(seconds=seconds, microseconds=micro)

    def instant(self) -> datetime:
        """A whole second (or, when fractional, any microsecond) near one of the anchors."""
        return self._at(pick(self.draw, self.anchors) + self.draw(_DELTA))

    def last_minutes(self) -> datetime:
        """A whole second in the last poll interval before the horizon."""
        return self.now + timedelta(seconds=self.span - self.draw(_BLIP_SHORT))

    def past(self) -> datetime:
        """An instant up to three hours before `now`."""
        return self._at(-self.draw(_PAST))

    def maybe(self, numerator: int, denominator: int) -> datetime | None:
        """An instant with probability numerator/denominator, else None."""
        return self.instant() if chance(self.draw, numerator, denominator) else None


def key_version(draw: st.DrawFn, clock: Clock, faults: int, name: str, created: datetime | None = None) -> KeyVersion:
    """One key version, usable now except for about one attribute in `faults`."""
    return KeyVersion(
        version=name,
        created=created if created is not None else clock.instant() if chance(draw, 1, faults) else clock.past(),
        enabled=not chance(draw, 1, faults),
        nbf=clock.instant() if chance(draw, 1, faults) else pick(draw, (None, None, clock.past())),
        exp=clock.maybe(1, 2),
        key_ops=pick(draw, BAD_KEY_OPS) if chance(draw, 1, faults) else pick(draw, GOOD_KEY_OPS),
        kty=pick(draw, (None, "RSA", "RSA-HSM")),
        key_size=pick(draw, (None, 2048, 3072)),
    )


def vault(draw: st.DrawFn, uri: str, faults: int) -> Vault:
    """A vault whose access map sometimes lacks a principal or some permissions."""
    access = {spelled_name(draw, p): permissions(draw, faults) for p in PRINCIPALS if not chance(draw, 1, faults)}
    return Vault(
        uri=uri,
        soft_delete=not chance(draw, 1, 5),
        purge_protection=not chance(draw, 1, 5),
        rbac=draw(_BOOLEANS),
        access=access,
        deleted=chance(draw, 1, faults * 2),
    )


def key(draw: st.DrawFn, clock: Clock, faults: int, uri: str, name: str) -> Key:
    """A key with 1-3 versions, sometimes soft-deleted."""
    count = pick(draw, (1, 2, 3))
    versions = []
    for index, version in enumerate(SNAPSHOT_VERSIONS[:count]):
        # Later versions may be created within the window: a pinned reference waits for its version.
        created = clock.instant() if index and chance(draw, 1, 2) else None
        versions.append(key_version(draw, clock, faults, spelled_name(draw, version), created=created))
    policy = {"lifetimeActions": [{"action": "Rotate"}], "expiryTime": "P90D"}
    # Sometimes a role assignment at the key's own scope, which adds to what the vault grants.
    access = {spelled_name(draw, p): pick(draw, KEY_SCOPE_PERMISSIONS) for p in PRINCIPALS if chance(draw, 1, 8)}
    return Key(
        vault=spelled_vault(draw, uri),
        name=spelled_name(draw, name),
        versions=tuple(versions),
        deleted=chance(draw, 1, faults * 2),
        rotation_policy=pick(draw, (None, policy)),
        access=access,
    )


def blind_spot(draw: st.DrawFn, uris: Sequence[str]) -> BlindSpot:
    """Something a live scan could not read: a vault, a key (which may not exist) or a subscription."""
    scope = pick(draw, (BlindScope.VAULT, BlindScope.KEY, BlindScope.SUBSCRIPTION))
    uri = spelled_vault(draw, pick(draw, uris))
    if scope is BlindScope.VAULT:
        return BlindSpot(scope, uri, "403 Forbidden")
    if scope is BlindScope.KEY:
        return BlindSpot(scope, key_url(uri, spelled_name(draw, pick(draw, KEY_NAMES))), "403 Forbidden")
    return BlindSpot(scope, "/subscriptions/sub", "AuthorizationFailed")


def key_ref(draw: st.DrawFn, uris: Sequence[str], key_ids: Sequence[tuple[str, str]], faults: int) -> KeyRef:
    """A key reference: pinned or versionless, system- or user-assigned identity; the key may not exist."""
    if key_ids and not chance(draw, 1, faults):
        uri, name = pick(draw, key_ids)
    else:
        uri, name = pick(draw, uris), pick(draw, KEY_NAMES)
    version = pick(draw, BAD_REF_VERSIONS) if chance(draw, 1, faults) else pick(draw, GOOD_REF_VERSIONS)
    return KeyRef(
        vault=spelled_vault(draw, uri),
        name=spelled_name(draw, name),
        version=None if version is None else spelled_name(draw, version),
        identity=pick(draw, REF_IDENTITIES),
    )


def namespace(
    draw: st.DrawFn, index: int, uris: Sequence[str], key_ids: Sequence[tuple[str, str]], faults: int
) -> Namespace:
    """A CMK namespace with 1-3 distinct references and random identities."""
    user_assigned: dict[str, str | None] = {}
    for resource_id, principal in USER_ASSIGNED.items():
        if not chance(draw, 1, faults):
            user_assigned[resource_id] = None if chance(draw, 1, faults) else principal
    system = None if chance(draw, 1, faults) else pick(draw, SYSTEM_PRINCIPALS)
    identity = NamespaceIdentity(principal_id=system, user_assigned=user_assigned)
    refs: dict[tuple[str, str, str | None, str | None], KeyRef] = {}
    for _ in range(pick(draw, (1, 2, 3))):
        ref = key_ref(draw, uris, key_ids, faults)
        refs.setdefault(ref_identity(ref), ref)
    name = f"ns-{index}"
    return Namespace(
        id=f"/subscriptions/sub/resourceGroups/rg-{index}/providers/Microsoft.ServiceBus/namespaces/{name}",
        name=spelled_name(draw, name),
        keys=tuple(refs.values()),
        identity=identity,
        tags=pick(draw, ({}, {"owner": "payments-oncall"})),
    )


def change(
    draw: st.DrawFn, clock: Clock, uris: Sequence[str], key_ids: Sequence[tuple[str, str]], faults: int
) -> Change:
    """One timeline change of any op; it may not apply (`applicable` filters those out)."""
    op = pick(draw, OPS)
    at = clock.instant()
    if key_ids and not chance(draw, 1, 4):
        uri, key_name = pick(draw, key_ids)
    else:
        uri, key_name = pick(draw, uris), pick(draw, KEY_NAMES)
    vault_uri = spelled_vault(draw, uri)
    key_name = spelled_name(draw, key_name)
    if op == "set_access":
        principal = spelled_name(draw, pick(draw, PRINCIPALS))
        return SetAccess(at=at, vault=vault_uri, principal=principal, permissions=permissions(draw, 2))
    if op == "delete_vault":
        return DeleteVault(at=at, vault=vault_uri)
    if op == "recover_vault":
        return RecoverVault(at=at, vault=vault_uri)
    if op == "new_version":
        created = clock.instant() if chance(draw, 1, 3) else at  # `created` defaults to `at`
        version = key_version(draw, clock, faults, pick(draw, NEW_VERSIONS), created=created)
        return NewVersion(at=at, vault=vault_uri, key=key_name, version=version)
    if op == "update_version":
        enabled = draw(_BOOLEANS) if chance(draw, 1, 2) else KEEP
        nbf = (clock.maybe(2, 3) if chance(draw, 1, 3) else KEEP) if enabled is not KEEP else clock.maybe(2, 3)
        exp = clock.maybe(2, 3) if chance(draw, 1, 2) else KEEP
        ops = pick(draw, (*GOOD_KEY_OPS, *BAD_KEY_OPS)) if chance(draw, 1, 3) else KEEP
        return UpdateVersion(
            at=at,
            vault=vault_uri,
            key=key_name,
            version=pick(draw, (None, None, *SNAPSHOT_VERSIONS, *NEW_VERSIONS)),
            enabled=enabled,
            nbf=nbf,
            exp=exp,
            key_ops=ops,
        )
    if op == "delete_key":
        return DeleteKey(at=at, vault=vault_uri, key=key_name)
    if op == "recover_key":
        return RecoverKey(at=at, vault=vault_uri, key=key_name)
    return PurgeKey(at=at, vault=vault_uri, key=key_name)


def blip(draw: st.DrawFn, clock: Clock, uris: Sequence[str], key_ids: Sequence[tuple[str, str]]) -> list[Change]:
    """A break and its repair up to 400 s later: the short outages that make revocation possible, not certain."""
    start = clock.instant()
    end = start + timedelta(seconds=draw(_BLIP))
    uri, key_name = pick(draw, key_ids) if key_ids else (pick(draw, uris), pick(draw, KEY_NAMES))
    kind = pick(draw, ("key", "vault", "access", "enabled"))
    if kind == "key":
        return [DeleteKey(at=start, vault=uri, key=key_name), RecoverKey(at=end, vault=uri, key=key_name)]
    if kind == "vault":
        return [DeleteVault(at=start, vault=uri), RecoverVault(at=end, vault=uri)]
    if kind == "access":
        principal = pick(draw, PRINCIPALS)
        return [
            SetAccess(at=start, vault=uri, principal=principal, permissions=frozenset({"get"})),
            SetAccess(at=end, vault=uri, principal=principal, permissions=FULL),
        ]
    return [
        UpdateVersion(at=start, vault=uri, key=key_name, enabled=False),
        UpdateVersion(at=end, vault=uri, key=key_name, enabled=True),
    ]


def outage(draw: st.DrawFn, clock: Clock, namespace: Namespace) -> list[Change]:
    """Every reference of one namespace broken at one instant and repaired a few minutes later."""
    start = clock.last_minutes() if chance(draw, 1, 2) else clock.instant()
    end = start + timedelta(seconds=draw(_BLIP))
    changes: list[Change] = []
    for ref in namespace.keys:
        kind = pick(draw, ("key", "vault", "access", "enabled"))
        principal = namespace.identity.principal_for(ref.identity)
        if kind == "key":
            changes += [
                DeleteKey(at=start, vault=ref.vault, key=ref.name),
                RecoverKey(at=end, vault=ref.vault, key=ref.name),
            ]
        elif kind == "vault":
            changes += [DeleteVault(at=start, vault=ref.vault), RecoverVault(at=end, vault=ref.vault)]
        elif kind == "access" and principal is not None:
            changes += [
                SetAccess(at=start, vault=ref.vault, principal=principal, permissions=frozenset()),
                SetAccess(at=end, vault=ref.vault, principal=principal, permissions=FULL),
            ]
        else:
            changes += [
                UpdateVersion(at=start, vault=ref.vault, key=ref.name, version=ref.version, enabled=False),
                UpdateVersion(at=end, vault=ref.vault, key=ref.name, version=ref.version, enabled=True),
            ]
    return changes


def applicable(snapshot: Snapshot, candidates: Sequence[Change]) -> tuple[Change, ...]:
    """The candidates, in order, minus each one that cannot apply on top of those kept before it."""
    kept: list[Change] = []
    for candidate in candidates:
        try:
            World(snapshot, [*kept, candidate])
        except ScenarioError:
            continue
        kept.append(candidate)
    return tuple(kept)


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    min_horizon: int = 2 * 3600,
    max_horizon: int = 4 * 3600,
    max_changes: int = 6,
    fractional: bool = False,
) -> Scenario:
    """A small valid scenario: 1-3 vaults, up to 4 keys, 1-3 namespaces, up to `max_changes` changes.

    Times are whole seconds unless `fractional`, which also leaves the horizon out (one year) at times.
    """
    now = BASE + timedelta(seconds=draw(_DAY_SECOND))
    if fractional and chance(draw, 1, 2):
        now += timedelta(microseconds=draw(_MICROSECONDS))
    horizon = now + timedelta(seconds=draw(st.integers(min_horizon, max_horizon)))
    clock = Clock(draw, now, horizon, fractional=fractional)
    # About one in `faults` of the things that can break a reference is broken in the snapshot.
    faults = pick(draw, (12, 4, 40))
    uris = draw(st.lists(st.sampled_from(VAULT_URIS), min_size=1, max_size=3, unique=True))
    key_ids = draw(
        st.lists(
            st.sampled_from([(uri, name) for uri in uris for name in KEY_NAMES]),
            min_size=0 if faults == 4 else 1,
            max_size=4,
            unique=True,
        )
    )
    snapshot = Snapshot(
        vaults=tuple(vault(draw, uri, faults) for uri in uris),
        keys=tuple(key(draw, clock, faults, uri, name) for uri, name in key_ids),
        namespaces=tuple(namespace(draw, i, uris, key_ids, faults) for i in range(pick(draw, (1, 2, 3)))),
        blind=tuple(blind_spot(draw, uris) for _ in range(1 if chance(draw, 1, 6) else 0)),
    )
    candidates: list[Change] = []
    for _ in range(pick(draw, range(max_changes + 1))):
        kind = pick(draw, ("change", "change", "blip", "outage"))
        if kind == "outage":
            candidates += outage(draw, clock, pick(draw, snapshot.namespaces))
        elif kind == "blip":
            candidates += blip(draw, clock, uris, key_ids)
        else:
            candidates.append(change(draw, clock, uris, key_ids, faults))
    leave_out_horizon = fractional and chance(draw, 1, 3)
    return Scenario(
        now=now,
        snapshot=snapshot,
        horizon=None if leave_out_horizon else horizon,
        changes=applicable(snapshot, candidates),
    )


def all_refs(uris: Sequence[str]) -> list[KeyRef]:
    """Every reference `key_ref` can draw, in a canonical spelling."""
    return [
        KeyRef(vault=uri, name=name, version=version, identity=identity)
        for uri in uris
        for name in KEY_NAMES
        for version in dict.fromkeys(REF_VERSIONS)
        for identity in dict.fromkeys(REF_IDENTITIES)
    ]


def vault_uris(scenario: Scenario) -> list[str]:
    """The URIs of the scenario's vaults, as listed."""
    return [v.uri for v in scenario.snapshot.vaults]
