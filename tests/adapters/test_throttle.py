"""Key Vault pacing: a vault's share of its limit is never exceeded in any window, Retry-After holds the whole
vault back, and against the stand-in's enforced limit a scan at a share below 100 % sees no 429."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.adapters.throttle import VaultRateLimiter, rbac_scope
from monitor.domain.errors import StateStoreError
from monitor.domain.scenario import parse_scenario
from monitor.sandbox import RateLimit, Sandbox
from tests.builders import key, namespace, ref, scenario, version


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def _admitted(limiter: VaultRateLimiter, time: FakeTime, requests: int, vault: str = "kv-a") -> list[float]:
    stamps = []

    async def run() -> None:
        for _ in range(requests):
            await limiter.acquire(vault)
            stamps.append(time.now)

    asyncio.run(run())
    return stamps


def _busiest_window(stamps: list[float], window: float) -> int:
    busiest, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= window:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


def test_no_ten_second_window_gets_more_than_the_share():
    time = FakeTime()
    limiter = VaultRateLimiter(0.5, clock=time.clock, sleep=time.sleep)
    stamps = _admitted(limiter, time, 3000)
    # Unknown key type: the HSM limit (2,000 per 10 s), half of it.
    assert _busiest_window(stamps, 10.0) <= 1000
    # ...and it is used: a 100-request burst, then 90 a second (the share less the burst, spread): 32.2 s.
    assert 32.0 <= stamps[-1] <= 32.5


def test_a_vault_of_software_keys_gets_the_software_limit():
    time = FakeTime()
    limiter = VaultRateLimiter(0.5, clock=time.clock, sleep=time.sleep)
    limiter.saw_key_type("kv-a", "RSA")
    assert limiter.limit("kv-a") == 4000 and limiter.allowed_per_second("kv-a") == 200
    stamps = _admitted(limiter, time, 4000)
    assert _busiest_window(stamps, 10.0) <= 2000
    limiter.saw_key_type("kv-a", "RSA-HSM")  # one HSM key: the vault's lower limit applies
    assert limiter.limit("kv-a") == 2000


def test_a_managed_hsm_gets_its_own_per_second_limits_for_key_reads_and_for_role_management():
    """An HSM's limits are per second (1,100 key reads, 5 role-management calls), whatever its keys: no second
    sees more than its share of either, and the role listing does not wait behind the key reads."""
    time = FakeTime()
    limiter = VaultRateLimiter(0.5, clock=time.clock, sleep=time.sleep)
    hsm = "https://hsm-prod.managedhsm.azure.net"
    limiter.saw_key_type(hsm, "RSA-HSM")
    assert limiter.limit(hsm) == 11000 and limiter.allowed_per_second(hsm) == 550
    stamps = _admitted(limiter, time, 3000, vault=hsm)
    assert _busiest_window(stamps, 1.0) <= 1100
    roles = rbac_scope(hsm)
    assert limiter.allowed_per_second(roles) == 2.5
    assert _busiest_window(_admitted(limiter, time, 40, vault=roles), 1.0) <= 5


def test_retry_after_holds_back_every_request_to_that_vault_only():
    time = FakeTime()
    limiter = VaultRateLimiter(1.0, clock=time.clock, sleep=time.sleep)
    for _ in range(100):  # what the vault answered before it said 429: the pace it is cut to
        limiter.answered("kv-a")
    limiter.pause("kv-a", 3.0)
    assert _admitted(limiter, time, 1, "kv-b") == [0.0]
    (first,) = _admitted(limiter, time, 1, "kv-a")
    assert 3.0 <= first <= 3.5
    assert limiter.allowed_per_second("kv-a") == pytest.approx(0.9 * 100 / 10)  # cut to what it answered
    limiter.pause("kv-a", 3600)  # an absurd hint is capped: the poll must end inside its period
    (later,) = _admitted(limiter, time, 1, "kv-a")
    assert later - first <= 61.0


def test_without_the_store_each_instance_paces_at_a_quarter_of_the_share_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
):
    """The shared budget's store fails for the first 15 s: requests go on at a quarter of the share (what
    several instances can each take without talking), the store is asked once a window, not once a request,
    one warning says so, and the share comes back with the store."""
    time = FakeTime()
    calls: list[float] = []

    async def budget(scope: str, start: datetime, wanted: int, limit: int) -> int:
        calls.append(time.now)
        if time.now < 15.0:
            raise StateStoreError("budget keyvault kv-a", "HTTP 503 ServerBusy")
        return wanted

    limiter = VaultRateLimiter(0.5, clock=time.clock, sleep=time.sleep, wall=time.clock, budget=budget)
    with caplog.at_level(logging.INFO, logger="keyhealth.throttle"):
        stamps = _admitted(limiter, time, 1500)
    during = [stamp for stamp in stamps if stamp < 15.0]
    # HSM limit (2,000 per 10 s), half of it, a quarter of that: 25 a second, from the first second.
    assert 350 <= len(during) <= 375
    assert _busiest_window(during, 10.0) <= 250
    assert len([c for c in calls if c < 15.0]) == 2  # at 0 s and 10 s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "StateStoreError" in warnings[0].getMessage()
    assert any("available again" in r.getMessage() for r in caplog.records)
    after = [stamp for stamp in stamps if stamp >= 20.0]
    assert after and _busiest_window(after, 10.0) > 250  # back to the share


def test_a_vault_read_at_full_pace_asks_the_store_once_a_slice_after_its_first():
    """A slice's first grant is small (a small vault needs a few) and doubles while the vault stays busy; the
    next slice starts at what the last one spent, so a busy vault costs one store call a slice, not six. The
    share holds all the same."""
    time = FakeTime()
    calls: list[tuple[int, int]] = []  # (slice, units asked)

    async def budget(scope: str, start: datetime, wanted: int, limit: int) -> int:
        calls.append((int(start.timestamp()), wanted))
        return wanted

    limiter = VaultRateLimiter(0.5, clock=time.clock, sleep=time.sleep, wall=time.clock, budget=budget)
    stamps = _admitted(limiter, time, 1000)
    per_slice: dict[int, list[int]] = {}
    for slice_start, wanted in calls:
        per_slice.setdefault(slice_start, []).append(wanted)
    first, *later = [per_slice[s] for s in sorted(per_slice)]
    assert first[0] == 4 and len(first) > 1  # FIRST_CHUNK, then doubling
    full = [asks for asks in later[:-1]]  # the last slice may end the run part-way
    assert full and all(len(asks) == 1 for asks in full)
    assert _busiest_window(stamps, 10.0) <= 1000  # HSM limit 2,000 per 10 s, half of it


def test_requests_in_flight_to_a_vault_are_capped_at_a_tenth_of_its_share():
    limiter = VaultRateLimiter(0.5, software_limit=200, hsm_limit=200, window=1.0)
    most = limiter.most_in_flight("kv-a")
    assert most == 10
    peak = 0
    inside = 0

    async def one() -> None:
        nonlocal peak, inside
        async with limiter.sending("kv-a"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)  # an answer that takes a while
            inside -= 1

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(40)))

    asyncio.run(run())
    assert peak == most


VAULTS = [f"https://kv-{n}.vault.azure.net" for n in range(2)]


@pytest.fixture
def crowded_fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """30 keys in each of two vaults, and a stand-in that allows 40 requests per vault per second."""
    http_challenge_cache.clear()
    keys = [key(f"k{n}", version(f"v{n}"), vault_uri=vault) for vault in VAULTS for n in range(30)]
    namespaces = [
        namespace(f"sb-{v}-{n}", ref(f"k{n}", vault_uri=vault)) for v, vault in enumerate(VAULTS) for n in range(30)
    ]
    document = scenario(namespaces, keys, vaults=[{"uri": v, "access": {}} for v in VAULTS])
    for entry in document["vaults"]:
        entry["access"] = {"00000000-0000-0000-0000-00000000aaaa": ["get", "wrapKey", "unwrapKey"]}
    parsed, _ = parse_scenario(document)
    with Sandbox(parsed, rate_limit=RateLimit(40, 1.0)) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_CONCURRENCY", "64")
        yield running
    http_challenge_cache.clear()


def _scan(limiter: VaultRateLimiter | None, sandbox: Sandbox) -> dict[str, str]:
    from monitor.app.reading import check
    from monitor.entry.bootstrap import azure_readers
    from monitor.entry.config import Settings

    settings = Settings.from_environment()

    async def run() -> dict[str, str]:
        async with azure_readers(settings) as readers:
            if limiter is not None:
                readers.keys._clients.limiter = limiter  # type: ignore[attr-defined]
            _, report = await check(
                readers, now=datetime(2026, 11, 22, tzinfo=UTC), thresholds=settings.thresholds, concurrency=64
            )
        return {n.prediction.namespace.name: n.prediction.status_now.value for n in report.namespaces}

    return asyncio.run(run())


def test_below_the_share_the_stand_in_never_throttles(crowded_fleet: Sandbox):
    """Sized for the stand-in's limit (40 a second) at a 90 % share: 60 key reads, not one 429."""
    limiter = VaultRateLimiter(0.9, software_limit=40, hsm_limit=40, window=1.0)
    statuses = _scan(limiter, crowded_fleet)
    assert set(statuses.values()) == {"healthy"} and len(statuses) == 60
    assert crowded_fleet.requests.count(service="keyvault", status=429) == 0
    assert crowded_fleet.requests.count(service="keyvault", status=200) >= 60


def test_when_the_vault_throttles_anyway_the_scan_waits_and_still_sees_everything(crowded_fleet: Sandbox):
    """A limiter that believes the vault allows 20 times more (someone else is using it): 429s come back
    with Retry-After; the vault is held back, its pace cut to what it answers, and every key is still read."""
    crowded_fleet.faults.rate_limit = RateLimit(10, 1.0)
    limiter = VaultRateLimiter(1.0, software_limit=200, hsm_limit=200, window=1.0)
    statuses = _scan(limiter, crowded_fleet)
    assert set(statuses.values()) == {"healthy"}
    assert crowded_fleet.requests.count(service="keyvault", status=429) > 0
    assert limiter.throttled > 0


# -- Resource Graph's per-user quota


def test_the_inventory_waits_for_resource_graph_s_quota_instead_of_being_refused():
    """With the stand-in's quota cut to 3 queries a second, eight inventory queries in a row by one monitor see no
    429: each answer says what is left, and the query after the last one waits for the window to reset."""
    from monitor.adapters.azure_clients import AzureClients
    from monitor.adapters.resourcegraph import ResourceGraphInventory
    from monitor.entry.bootstrap import azure_options
    from monitor.entry.config import Settings
    from monitor.sandbox import AsyncStaticTokenCredential

    parsed, _ = parse_scenario(scenario([namespace("sb-a", ref("k1"))], [key("k1")]))

    async def run() -> tuple[list[int], float, int]:
        with Sandbox(parsed) as sandbox:
            sandbox.faults.graph_quota = RateLimit(3, 1.0)
            clients = AzureClients(
                AsyncStaticTokenCredential(), azure_options(Settings.from_environment(sandbox.environment()))
            )
            try:
                inventory = ResourceGraphInventory(clients)
                subscriptions = await inventory.list_subscriptions()
                found = [len((await inventory.list_namespaces_in(subscriptions)).namespaces) for _ in range(8)]
                statuses = [r.status for r in sandbox.requests.records if "ResourceGraph" in r.path]
                return found, clients.graph_quota.waited, statuses.count(429) + 100 * (len(statuses) != 8)
            finally:
                await clients.close()

    found, waited, refused = asyncio.run(run())
    assert found == [1] * 8
    assert refused == 0  # eight queries, none of them a 429
    assert waited > 0


def test_the_graph_quota_reads_resource_graph_s_headers():
    """remaining 0 and a reset in 00:00:03 hold the next query back 3 s plus the margin for cut-down seconds;
    headers absent or malformed change nothing."""
    from monitor.adapters.throttle import GRAPH_RESET_MARGIN, GraphQuota

    class Answer:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    time = FakeTime()
    quota = GraphQuota(clock=time.clock, sleep=time.sleep)

    async def run() -> list[float]:
        stamps = []
        await quota.acquire()
        quota.saw(Answer({"x-ms-user-quota-remaining": "1", "x-ms-user-quota-resets-after": "00:00:04"}))  # type: ignore[arg-type]
        await quota.acquire()
        stamps.append(time.now)
        quota.saw(Answer({"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": "00:00:03"}))  # type: ignore[arg-type]
        await quota.acquire()
        stamps.append(time.now)
        quota.saw(Answer({"x-ms-user-quota-remaining": "zero", "x-ms-user-quota-resets-after": "3s"}))  # type: ignore[arg-type]
        await quota.acquire()
        stamps.append(time.now)
        return stamps

    assert asyncio.run(run()) == [0.0, 3.0 + GRAPH_RESET_MARGIN, 3.0 + GRAPH_RESET_MARGIN]
