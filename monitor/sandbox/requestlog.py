"""A log of the requests the sandbox answered, for tests and benchmarks to count by service, vault and status."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from monitor.sandbox.wire import Service

Outcome = Literal["answered", "reset", "hung"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: where it went, how it ended, and which fault (if any) shaped it."""

    service: Service
    vault: str | None  # the vault host, for Key Vault requests and ARM paths that name a vault
    method: str
    path: str
    status: int | None  # None when the connection was reset or the request hung
    outcome: Outcome
    fault: str | None
    sandbox_time: datetime
    seconds: float  # how long the answer took, wall clock
    received: float  # when the request arrived, wall clock (time.time()): for counting per window of real time


class RequestLog:
    """Thread-safe: the server appends while a test reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.records)

    def count(
        self,
        *,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        status: int | None = None,
        outcome: Outcome | None = None,
        path: str | None = None,
    ) -> int:
        """How many requests match every given field (`vault` by host or name; `path` as a substring)."""
        return len(self.select(service=service, vault=vault, method=method, status=status, outcome=outcome, path=path))

    def select(
        self,
        *,
        service: Service | None = None,
        vault: str | None = None,
        method: str | None = None,
        status: int | None = None,
        outcome: Outcome | None = None,
        path: str | None = None,
    ) -> list[RequestRecord]:
        """The requests matching every given field."""
        wanted_vault = vault.lower() if vault else None
        return [
            r
            for r in self.records
            if (service is None or r.service == service)
            and (wanted_vault is None or wanted_vault in {r.vault or "", (r.vault or "").split(".")[0]})
            and (method is None or r.method.upper() == method.upper())
            and (status is None or r.status == status)
            and (outcome is None or r.outcome == outcome)
            and (path is None or path in r.path)
        ]

    def by_status(self, *, service: Service | None = None) -> Counter[int | None]:
        """Counts per status (None for resets and hangs)."""
        return Counter(r.status for r in self.records if service is None or r.service == service)

    def by_vault(self) -> Counter[str | None]:
        """Counts per vault host (None for ARM requests that name no vault)."""
        return Counter(r.vault for r in self.records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
