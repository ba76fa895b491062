"""Injectable failures: rules that answer with an error, delay, hang, reset or truncate; latency; rate limits."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from monitor.sandbox.wire import Service

FaultKind = Literal["status", "delay", "hang", "reset", "truncate"]
# Key Vault's service limit for key GETs and most key operations: 4,000 per 10 s per vault.
KEYVAULT_REQUESTS = 4000
KEYVAULT_WINDOW = 10.0
DEFAULT_HANG = 3600.0  # longer than any client timeout; the server's stop ends it sooner


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a fault rule can match a request on."""

    service: Service
    vault: str | None  # the vault's host; for ARM, the vault a path names, if any
    method: str
    path: str  # Key Vault: after /keyvault/<host>; ARM: the whole path
    next_page: bool  # carries the $skiptoken of a nextLink


def _vault_host(vault: str | None) -> str | None:
    if vault is None:
        return None
    text = vault.strip()
    if "://" in text:
        return (urlsplit(text).hostname or "").lower()
    return text.rstrip("/").lower()


@dataclass(slots=True)
class FaultRule:
    """One injected failure and the requests it applies to.

    Match fields left None match anything. `vault` is a vault URI, host or name; `path` is a regular
    expression searched in the service path (for Key Vault, the part after /keyvault/<host>, such as
    /keys/sb-cmk/); `next_page_only` matches only requests that follow a nextLink; `times` limits the
    rule to its first N matches. `matched` counts the requests it has acted on.
    """

    kind: FaultKind
    service: Service | None = None
    vault: str | None = None
    method: str | None = None
    path: str | None = None
    next_page_only: bool = False
    times: int | None = None
    status: int = 500
    code: str | None = None
    message: str | None = None
    inner_code: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    matched: int = 0
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.vault = _vault_host(self.vault)
        self._pattern = re.compile(self.path, re.IGNORECASE) if self.path else None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.matched >= self.times

    def matches(self, info: RequestInfo) -> bool:
        if self.service is not None and self.service != info.service:
            return False
        if self.vault is not None:
            host = info.vault or ""
            if self.vault not in {host, host.split(".", 1)[0]}:
                return False
        if self.method is not None and self.method.upper() != info.method.upper():
            return False
        if self._pattern is not None and not self._pattern.search(info.path):
            return False
        return not self.next_page_only or info.next_page


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `requests` per `window` seconds per vault."""

    requests: int = KEYVAULT_REQUESTS
    window: float = KEYVAULT_WINDOW


KEYVAULT_RATE_LIMIT = RateLimit()
# Resource Graph's per-user quota: 15 queries in a 5-second window, told in every answer's headers.
GRAPH_QUOTA = RateLimit(15, 5.0)


class Faults:
    """The fault rules, added latency and per-vault rate limit of one sandbox (thread-safe).

    Rules are tried in the order added; the first that matches (and is not exhausted) acts, once per
    request. The convenience methods each add one rule and return it.
    """

    def __init__(
        self, *, rate_limit: RateLimit | None = KEYVAULT_RATE_LIMIT, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._monotonic = monotonic
        self._rate_limit = rate_limit
        self._hits: dict[str, deque[float]] = {}
        self.latency = 0.0  # seconds added before every answer
        self.graph_quota: RateLimit | None = GRAPH_QUOTA
        self._graph_window: tuple[float, int] | None = None  # (start, queries in it)

    # --- rules ----------------------------------------------------------------------------------------

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule and set latency back to 0 (the rate limit stays)."""
        with self._lock:
            self._rules.clear()
            self.latency = 0.0

    def take(self, info: RequestInfo) -> FaultRule | None:
        """The first live rule matching `info`, counted as used; None when none matches."""
        with self._lock:
            for rule in self._rules:
                if not rule.exhausted and rule.matches(info):
                    rule.matched += 1
                    return rule
        return None

    def respond(
        self,
        status: int,
        *,
        code: str | None = None,
        message: str | None = None,
        inner_code: str | None = None,
        retry_after: float | None = None,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        path: str | None = None,
        next_page_only: bool = False,
        times: int | None = None,
    ) -> FaultRule:
        """Answer matching requests with `status` and the service's real error body (default code and message)."""
        return self.add(
            FaultRule(
                "status",
                service,
                vault,
                method,
                path,
                next_page_only,
                times,
                status=status,
                code=code,
                message=message,
                inner_code=inner_code,
                retry_after=retry_after,
            )
        )

    def forbid(
        self,
        vault: str,
        *,
        inner_code: str = "AccessDenied",
        message: str | None = None,
        path: str | None = None,
        times: int | None = None,
    ) -> FaultRule:
        """Make a vault's data plane answer 403 Forbidden to every caller (the monitor's own 403)."""
        return self.respond(
            403,
            code="Forbidden",
            inner_code=inner_code,
            message=message,
            service="keyvault",
            vault=vault,
            path=path,
            times=times,
        )

    def delay(
        self,
        seconds: float,
        *,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        path: str | None = None,
        next_page_only: bool = False,
        times: int | None = None,
    ) -> FaultRule:
        """Delay matching requests by `seconds`, then answer them normally."""
        return self.add(FaultRule("delay", service, vault, method, path, next_page_only, times, seconds=seconds))

    def hang(
        self,
        *,
        seconds: float = DEFAULT_HANG,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        path: str | None = None,
        next_page_only: bool = False,
        times: int | None = None,
    ) -> FaultRule:
        """Never answer matching requests (for `seconds`, or until the sandbox stops), then drop the connection."""
        return self.add(FaultRule("hang", service, vault, method, path, next_page_only, times, seconds=seconds))

    def reset(
        self,
        *,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        path: str | None = None,
        next_page_only: bool = False,
        times: int | None = None,
    ) -> FaultRule:
        """Drop the connection of matching requests without an answer."""
        return self.add(FaultRule("reset", service, vault, method, path, next_page_only, times))

    def truncate(
        self,
        *,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        path: str | None = None,
        next_page_only: bool = False,
        times: int | None = None,
    ) -> FaultRule:
        """Answer matching requests with their real status but only the first half of the JSON body."""
        return self.add(FaultRule("truncate", service, vault, method, path, next_page_only, times))

    # --- rate limit -----------------------------------------------------------------------------------

    @property
    def rate_limit(self) -> RateLimit | None:
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, limit: RateLimit | None) -> None:
        """Set the per-vault limit (None: unlimited); the window restarts."""
        with self._lock:
            self._rate_limit = limit
            self._hits.clear()

    def admit_graph(self) -> tuple[bool, int, float]:
        """Count one Resource Graph query against the caller's quota window (one window starts at the first query
        after the last one ended): (admitted, queries left in the window, seconds until it resets)."""
        with self._lock:
            quota = self.graph_quota
            if quota is None:
                return True, 15, 5.0
            now = self._monotonic()
            if self._graph_window is None or now >= self._graph_window[0] + quota.window:
                self._graph_window = (now, 0)
            start, used = self._graph_window
            resets = max(start + quota.window - now, 0.0)
            if used >= quota.requests:
                return False, 0, resets
            self._graph_window = (start, used + 1)
            return True, quota.requests - used - 1, resets

    def admit(self, vault: str) -> float | None:
        """Count one request to `vault`; None when admitted, else the seconds until one would be."""
        with self._lock:
            limit = self._rate_limit
            if limit is None:
                return None
            now = self._monotonic()
            hits = self._hits.setdefault(vault, deque())
            while hits and hits[0] <= now - limit.window:
                hits.popleft()
            if len(hits) >= limit.requests:
                return max(hits[0] + limit.window - now, 0.001)
            hits.append(now)
            return None


def forbidden_message(inner_code: str | None, vault: str, tenant_id: str, action: str) -> str:
    """Key Vault's wording of a 403 for the given inner error code."""
    nobody = "00000000-0000-0000-0000-000000000000"
    caller = f"appid={nobody};oid={nobody};iss=https://sts.windows.net/{tenant_id}/"
    where = f"{vault};location=westeurope"
    if inner_code == "ForbiddenByRbac":
        return (
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role "
            "definitions were changed recently, please observe propagation time.\r\n"
            f"Caller: {caller}\r\nAction: '{action}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\n"
            f"DecisionReason: null \r\nVault: {where}\r\n"
        )
    if inner_code == "ForbiddenByFirewall":
        return (
            "Client address is not authorized and caller is not a trusted service.\r\nClient address: 127.0.0.1\r\n"
            f"Caller: {caller}\r\nVault: {where}"
        )
    if inner_code == "ForbiddenByPolicy":
        return f"The operation is forbidden by an Azure Policy assignment.\r\nCaller: {caller}\r\nVault: {where}"
    return (
        f"The user, group or application '{caller}' does not have keys get permission on key vault '{where}'. "
        "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
    )
