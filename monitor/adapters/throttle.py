"""Key Vault request pacing: each vault gets a share of its published service limit, and a 429's
Retry-After holds back every request to that vault, not only the one that was refused."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import AsyncHttpResponse, HttpRequest

# Key Vault's published limits for key transactions other than create (get included), per vault and
# region, for RSA 2,048-bit keys: software-protected and HSM-protected.
WINDOW_SECONDS = 10.0
SOFTWARE_KEY_LIMIT = 4000
HSM_KEY_LIMIT = 2000
# Of a vault's share, what may go at once; the rest is spread evenly, so no 10 s window sees more than the share.
BURST_FRACTION = 0.1
MAX_RETRY_AFTER = 60.0  # a longer hint is capped: a poll must end within Service Bus's 5-minute period
MIN_SLOWDOWN = 1 / 256
RECOVERY = 1.25  # per quiet window after throttling: back to the full share in about ten windows
_EPSILON = 1e-9  # token arithmetic in floats: 0.9999999999 tokens is one token


def is_hsm_key_type(kty: str | None) -> bool:
    return bool(kty) and str(kty).upper().endswith("-HSM")


@dataclass
class _Bucket:
    limit: int  # requests per WINDOW_SECONDS that the vault allows for its key type
    tokens: float
    stamp: float
    paused_until: float = 0.0
    seen_hsm: bool = False
    # Cut at each throttling episode to what the vault answered in the last window, grown back by RECOVERY
    # each quiet window: the vault allows less than its published limit when others use it too.
    slowdown: float = 1.0
    last_change: float = 0.0
    answered: deque[float] = field(default_factory=deque)  # when requests were answered (not throttled)


class VaultRateLimiter:
    """A token bucket per vault, sized at `share` of the vault's limit.

    A vault starts at the HSM limit (the lower one) until its keys have been seen; a vault whose keys
    are all software-protected then gets the software limit. Buckets live as long as the limiter (one
    per monitor process), so what was learnt carries over from poll to poll.
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
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.software_limit = software_limit
        self.hsm_limit = hsm_limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, _Bucket] = {}
        self.throttled = 0  # 429s seen, for the benchmark and logs

    def _bucket(self, vault: str) -> _Bucket:
        bucket = self._buckets.get(vault)
        if bucket is None:
            limit = self.hsm_limit
            now = self._clock()
            bucket = self._buckets[vault] = _Bucket(limit, 0.0, now, last_change=now)
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
                bucket.tokens = max(bucket.tokens - 1.0, 0.0)
                return
            # At least a millisecond: a wait below the clock's resolution would never let time pass.
            await self._sleep(max((1.0 - bucket.tokens) / self._rate(bucket), 0.001))


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
        await self._limiter.acquire(self._vault)
        response = await self.next.send(request)
        if response.http_response.status_code == 429:
            self._limiter.pause(self._vault, retry_after_seconds(response.http_response))
        else:
            self._limiter.answered(self._vault)
        return response
