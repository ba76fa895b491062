"""The errors the sandbox raises on purpose, each carrying what the caller needs to act on it."""

from __future__ import annotations

from monitor.domain.errors import KeyhealthError


class SandboxError(KeyhealthError):
    """Base of the sandbox's own errors."""


class UnknownVaultError(SandboxError, LookupError):
    """A vault URI or host names no vault of the sandbox's scenario."""

    def __init__(self, vault: str) -> None:
        self.vault = vault
        super().__init__(f"no vault {vault!r} in the sandbox's scenario")


class ChangeRejectedError(SandboxError, ValueError):
    """A change cannot apply to the sandbox's timeline: `problem` says why."""

    def __init__(self, change: object, problem: str) -> None:
        self.change = change
        self.problem = problem
        super().__init__(f"cannot apply {change!r}: {problem}")


class SandboxNotRunningError(SandboxError, RuntimeError):
    """An operation needs the sandbox's server, which is not running."""
