"""Key Vault request pacing: each vault gets a share of its published service limit, and a 429's
Retry-After holds back every request to that vault, not only the one that was refused.

With a shared budget (the state store's `take_budget`), the share is shared by every instance of the
monitor: a request also needs a unit of the vault's budget for the current slice of wall-clock time,
granted across instances in chunks, so two instances together stay within one share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import AsyncHttpResponse, HttpRequest

# Key Vault's published limits for key transactions other than create (get included), per vault and
# region, for RSA 2,048-bit keys: software-protected and HSM-protected.
WINDOW_SECONDS = 10.0
SOFTWARE_KEY_LIMIT = 4000
HSM_KEY_LIMIT = 2000
# A Managed HSM's limits are its own, published per second: key reads (get) 1,100 a second, role management
# (listing assignments and definitions included) 5 a second. Given here per WINDOW_SECONDS like a vault's.
MANAGED_HSM_KEY_LIMIT = 11000
MANAGED_HSM_RBAC_LIMIT = 50
RBAC_SCOPE_PREFIX = "rbac:"  # a Managed HSM's role-management requests are paced apart from its key reads
# Of a vault's share, what may go at once; the rest is spread evenly, so no 10 s window sees more than the share.
BURST_FRACTION = 0.1
MAX_RETRY_AFTER = 60.0  # a longer hint is capped: a poll must end within Service Bus's 5-minute period
MIN_SLOWDOWN = 1 / 256
RECOVERY = 1.25  # per quiet window after throttling: back to the full share in about ten windows
_EPSILON = 1e-9  # token arithmetic in floats: 0.9999999999 tokens is one token
# The shared budget is granted per tenth of the window: whatever the vault's own window is (fixed or
# sliding), no 10 s then sees more than 1.1 shares from all instances together.
SLICES_PER_WINDOW = 10
FIRST_CHUNK = 4  # units asked for first in a slice (a small vault needs a few); doubled each time after
# When the store cannot grant (down, throttled), each instance paces itself at this fraction of the share
# on its own: several instances then stay near one share without talking to each other.
FALLBACK_FRACTION = 0.25
# Asks the store for a vault's budget, across instances: (scope, slice start, wanted, limit) -> granted.
TakeBudget = Callable[[str, datetime, int, int], Awaitable[int]]

log = logging.getLogger("keyhealth.throttle")


def is_hsm_key_type(kty: str | None) -> bool:
    return bool(kty) and str(kty).upper().endswith("-HSM")


def rbac_scope(vault: str) -> str:
    """The limiter's scope for a Managed HSM's role-management requests (`vault` is its vault_id)."""
    return RBAC_SCOPE_PREFIX + vault


def _fixed_limit(vault: str) -> int | None:
    """The limit of a scope whose limit its keys do not decide: a Managed HSM's (all its keys are HSM keys)."""
    if vault.startswith(RBAC_SCOPE_PREFIX):
        return MANAGED_HSM_RBAC_LIMIT
    if ".managedhsm." in vault:
        return MANAGED_HSM_KEY_LIMIT
    return None


@dataclass
class _Bucket:
    limit: int  # requests per WINDOW_SECONDS that the vault allows for its key type
    tokens: float
    stamp: float
    paused_until: float = 0.0
    seen_hsm: bool = False
    fixed: bool = False  # a Managed HSM's: its published limit, whatever keys it holds
    # Cut at each throttling episode to what the vault answered in the last window, grown back by RECOVERY
    # each quiet window: the vault allows less than its published limit when others use it too.
    slowdown: float = 1.0
    last_change: float = 0.0
    answered: deque[float] = field(default_factory=deque)  # when requests were answered (not throttled)
    # The shared budget this instance holds for one slice of wall-clock time.
    grant_slice: int = -1
    grant_left: int = 0
    grant_chunk: int = 0  # the last chunk asked for in grant_slice
    grant_total: int = 0  # all granted in grant_slice
    granting: asyncio.Lock = field(default_factory=asyncio.Lock)  # one store call per vault at a time
    # Requests let through and not yet answered: capped, so requests paced while connections were still
    # opening cannot reach the vault together, over its limit, once they are open.
    in_flight: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)


class VaultRateLimiter:
    """A token bucket per vault, sized at `share` of the vault's limit.

    A vault starts at the HSM limit (the lower one) until its keys have been seen; a vault whose keys
    are all software-protected then gets the software limit. A Managed HSM has its own limits, for its key
    reads and for its role management (`rbac_scope`). Buckets live as long as the limiter (one
    per monitor process), so what was learnt carries over from poll to poll.

    With `budget`, the share is also drawn from a budget shared by all instances (`share_budget`).
    """

    def __init__(
        self,
        share: float,
        *,
        software_limit: int = SOFTWARE_KEY_LIMIT,
        hsm_limit: int = HSM_KEY_LIMIT,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
        budget: TakeBudget | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.software_limit = software_limit
        self.hsm_limit = hsm_limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._budget = budget
        self._store_back_at = 0.0  # while the store fails: when to ask it again (wall clock)
        self._buckets: dict[str, _Bucket] = {}
        self.throttled = 0  # 429s seen, for the benchmark and logs
        self.budget_calls = 0  # store calls for the shared budget, for the benchmark

    def share_budget(self, budget: TakeBudget) -> None:
        """Draw every vault's share from `budget` too: one share for all instances using the same store."""
        self._budget = budget

    def _bucket(self, vault: str) -> _Bucket:
        bucket = self._buckets.get(vault)
        if bucket is None:
            fixed = _fixed_limit(vault)
            limit = self.hsm_limit if fixed is None else fixed
            now = self._clock()
            bucket = self._buckets[vault] = _Bucket(limit, 0.0, now, last_change=now, fixed=fixed is not None)
            bucket.tokens = self._capacity(bucket)
        return bucket

    def _capacity(self, bucket: _Bucket) -> float:
        return max(1.0, bucket.limit * self.share * bucket.slowdown * BURST_FRACTION)

    def _rate(self, bucket: _Bucket) -> float:
        """Tokens a second: the share of the window's limit, less the burst, spread over the window."""
        return bucket.limit * self.share * bucket.slowdown * (1 - BURST_FRACTION) / self.window

    def limit(self, vault: str) -> int:
        return self._bucket(vault).limit

    def allowed_per_second(self, vault: str) -> float:
        """What this limiter lets through to `vault` on average: share * limit / window, less any cut."""
        bucket = self._bucket(vault)
        return bucket.limit * self.share * bucket.slowdown / self.window

    def saw_key_type(self, vault: str, kty: str | None) -> None:
        """Size the vault's bucket by the keys it holds: HSM once one HSM key is seen, else software."""
        if not kty:
            return
        bucket = self._bucket(vault)
        if bucket.fixed:
            return
        if is_hsm_key_type(kty):
            bucket.seen_hsm = True
        limit = self.hsm_limit if bucket.seen_hsm else self.software_limit
        if limit != bucket.limit:
            self._refill(bucket)
            bucket.limit = limit
            bucket.tokens = min(bucket.tokens, self._capacity(bucket))

    def pause(self, vault: str, seconds: float) -> None:
        """Hold every request to `vault` back for `seconds` (a 429's Retry-After)."""
        self.throttled += 1
        bucket = self._bucket(vault)
        now = self._clock()
        if now >= bucket.paused_until:  # a new episode, not another answer from the same burst
            # What the vault let through in the last window is what it allows us now: aim just below it.
            self._forget(bucket, now)
            fitting = 0.9 * len(bucket.answered) / (bucket.limit * self.share)
            bucket.slowdown = max(min(bucket.slowdown / 2, fitting), MIN_SLOWDOWN)
            bucket.last_change = now
        bucket.paused_until = max(bucket.paused_until, now + min(max(seconds, 0.0), MAX_RETRY_AFTER))
        bucket.tokens = 0.0  # the vault is over its limit: start the bucket empty after the pause

    def answered(self, vault: str) -> None:
        """A request to `vault` was answered (anything but a 429)."""
        bucket = self._bucket(vault)
        now = self._clock()
        bucket.answered.append(now)
        self._forget(bucket, now)

    def _forget(self, bucket: _Bucket, now: float) -> None:
        while bucket.answered and bucket.answered[0] <= now - self.window:
            bucket.answered.popleft()

    def _refill(self, bucket: _Bucket) -> None:
        now = self._clock()
        if bucket.slowdown < 1.0 and now - bucket.last_change >= self.window:
            bucket.slowdown = min(1.0, bucket.slowdown * RECOVERY)
            bucket.last_change = now
        if now > bucket.stamp:
            since = now - max(bucket.stamp, bucket.paused_until) if now > bucket.paused_until else 0.0
            bucket.tokens = min(self._capacity(bucket), bucket.tokens + since * self._rate(bucket))
            bucket.stamp = now

    async def acquire(self, vault: str) -> None:
        """Wait until one request to `vault` fits its share (and no Retry-After holds it)."""
        bucket = self._bucket(vault)
        while True:
            now = self._clock()
            if now < bucket.paused_until:
                await self._sleep(bucket.paused_until - now)
                continue
            self._refill(bucket)
            if bucket.tokens >= 1.0 - _EPSILON:
                if self._budget is not None and not self._spend_shared(bucket):
                    await self._top_up(vault, bucket)
                    continue
                bucket.tokens = max(bucket.tokens - 1.0, 0.0)
                return
            # At least a millisecond: a wait below the clock's resolution would never let time pass.
            await self._sleep(max((1.0 - bucket.tokens) / self._rate(bucket), 0.001))

    def most_in_flight(self, vault: str) -> int:
        """Requests to `vault` that may be sent and unanswered at once: a tenth of the window's share."""
        return self._slice_limit(self._bucket(vault))

    @contextlib.asynccontextmanager
    async def sending(self, vault: str) -> AsyncIterator[None]:
        """One request to `vault`: waits for room among those in flight, then for its share; until answered."""
        bucket = self._bucket(vault)
        while bucket.in_flight >= self.most_in_flight(vault):
            bucket.room.clear()
            await bucket.room.wait()
        bucket.in_flight += 1
        try:
            await self.acquire(vault)
            yield
        finally:
            bucket.in_flight -= 1
            bucket.room.set()

    # -- the budget shared by all instances

    def _slice_seconds(self) -> float:
        return self.window / SLICES_PER_WINDOW

    def _slice_limit(self, bucket: _Bucket) -> int:
        """All instances together, per slice: the share of the vault's limit, a tenth of it."""
        return max(1, math.floor(bucket.limit * self.share / SLICES_PER_WINDOW))

    def _spend_shared(self, bucket: _Bucket) -> bool:
        if bucket.grant_slice == math.floor(self._wall() / self._slice_seconds()) and bucket.grant_left > 0:
            bucket.grant_left -= 1
            return True
        return False

    async def _top_up(self, vault: str, bucket: _Bucket) -> None:
        """Get more of the vault's shared budget for this slice, or wait for the next slice."""
        assert self._budget is not None  # noqa: S101 - only called with a budget
        async with bucket.granting:
            slice_seconds = self._slice_seconds()
            now = self._wall()
            current = math.floor(now / slice_seconds)
            if bucket.grant_slice == current and bucket.grant_left > 0:
                return  # another request of this instance just got some
            limit = self._slice_limit(bucket)
            if bucket.grant_slice == current:
                chunk = min(limit, max(1, bucket.grant_chunk * 2))
            elif bucket.grant_slice == current - 1:
                # Busy in the slice just past: ask at once for what it spent there. Doubling from FIRST_CHUNK
                # again took six store calls a slice for a vault read at full pace.
                chunk = min(limit, max(FIRST_CHUNK, bucket.grant_total - bucket.grant_left))
            else:
                chunk = min(limit, FIRST_CHUNK)
            if now < self._store_back_at:
                granted = self._fallback_grant(bucket, current, limit)
            else:
                try:
                    self.budget_calls += 1
                    start = datetime.fromtimestamp(current * slice_seconds, UTC)
                    granted = await self._budget(f"keyvault {vault}", start, chunk, limit)
                except Exception as error:  # any store failure: pace locally, never stop reading
                    if not self._store_back_at:  # once an outage, not once a request
                        log.warning(
                            "the shared Key Vault request budget is unavailable (%s): each instance paces every "
                            "vault at %d %% of its share on its own until the store answers",
                            describe_store_failure(error),
                            round(FALLBACK_FRACTION * 100),
                        )
                    self._store_back_at = now + self.window
                    granted = self._fallback_grant(bucket, current, limit)
                else:
                    if self._store_back_at:
                        log.info("the shared Key Vault request budget is available again")
                        self._store_back_at = 0.0
            if math.floor(self._wall() / slice_seconds) != current:
                return  # the slice ended while the store answered: what it granted is gone
            if granted > 0:
                if bucket.grant_slice != current:
                    bucket.grant_slice, bucket.grant_left, bucket.grant_total = current, 0, 0
                bucket.grant_left += granted
                bucket.grant_total += granted
                bucket.grant_chunk = chunk
                return
            # The slice is spent by all instances together: wait for the next.
            await self._sleep(max((current + 1) * slice_seconds - self._wall(), 0.001))

    def _fallback_grant(self, bucket: _Bucket, current: int, limit: int) -> int:
        """Without the store: FALLBACK_FRACTION of the slice's units, once per slice."""
        if bucket.grant_slice == current:
            return 0
        return max(1, math.floor(limit * FALLBACK_FRACTION))


def describe_store_failure(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def retry_after_seconds(response: AsyncHttpResponse) -> float:
    """A 429's Retry-After in seconds (Key Vault sends whole seconds); a second when absent or a date."""
    try:
        return float(response.headers.get("Retry-After") or 1.0)
    except ValueError:
        return 1.0


class VaultThrottlePolicy(AsyncHTTPPolicy[HttpRequest, AsyncHttpResponse]):
    """Per attempt (retries and the auth challenge included): wait for the vault's limiter, and pass a
    429's Retry-After on to it."""

    def __init__(self, limiter: VaultRateLimiter, vault: str) -> None:
        super().__init__()
        self._limiter = limiter
        self._vault = vault

    async def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[HttpRequest, AsyncHttpResponse]:
        async with self._limiter.sending(self._vault):
            response = await self.next.send(request)
        if response.http_response.status_code == 429:
            self._limiter.pause(self._vault, retry_after_seconds(response.http_response))
        else:
            self._limiter.answered(self._vault)
        return response


# Resource Graph tells each answer's caller its query quota: what is left, and when the window resets.
GRAPH_QUOTA_REMAINING = "x-ms-user-quota-remaining"
GRAPH_QUOTA_RESETS_AFTER = "x-ms-user-quota-resets-after"
# The reset is given in whole seconds, perhaps cut down: waiting this much longer never lands early.
GRAPH_RESET_MARGIN = 1.0


def _hms_seconds(text: str) -> float | None:
    """hh:mm:ss (as Resource Graph writes x-ms-user-quota-resets-after) in seconds; None for anything else."""
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    hours, minutes, seconds = (int(part) for part in parts)
    return float(hours * 3600 + minutes * 60 + seconds)


class GraphQuota:
    """Resource Graph's per-user query quota (documented as 15 queries per 5-second window, subject to change),
    as its answers state it: once none is left, the next query waits for the window to reset instead of being
    refused. A 100,000-namespace inventory is 100 pages, each a query."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._remaining: int | None = None  # None: not told, or the window it was told of has passed
        self._resets_at = 0.0
        self._lock = asyncio.Lock()
        self.waited = 0.0  # seconds spent waiting for the quota (for benchmarks and logs)

    async def acquire(self) -> None:
        async with self._lock:
            if self._remaining is not None and self._clock() >= self._resets_at:
                self._remaining = None
            if self._remaining is not None and self._remaining <= 0:
                wait = self._resets_at - self._clock()
                self.waited += max(wait, 0.0)
                await self._sleep(max(wait, 0.0))
                self._remaining = None
            if self._remaining is not None:
                self._remaining -= 1  # this query, until its answer says what is left

    def saw(self, response: AsyncHttpResponse) -> None:
        remaining_text = response.headers.get(GRAPH_QUOTA_REMAINING)
        resets = _hms_seconds(response.headers.get(GRAPH_QUOTA_RESETS_AFTER) or "")
        if remaining_text is None or resets is None:
            return  # not told: nothing to pace by (a 429 still gets the retry policy's back-off)
        try:
            remaining = int(remaining_text)
        except ValueError:
            return
        self._remaining = max(remaining, 0)
        self._resets_at = self._clock() + resets + GRAPH_RESET_MARGIN


class GraphQuotaPolicy(AsyncHTTPPolicy[HttpRequest, AsyncHttpResponse]):
    """Per attempt (retries included): wait for Resource Graph's quota, then learn it from the answer."""

    def __init__(self, quota: GraphQuota) -> None:
        super().__init__()
        self._quota = quota

    async def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[HttpRequest, AsyncHttpResponse]:
        await self._quota.acquire()
        response = await self.next.send(request)
        self._quota.saw(response.http_response)
        return response
