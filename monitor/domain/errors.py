"""Every error keyhealth raises on purpose, each carrying what a person needs to fix the cause."""

from __future__ import annotations


class KeyhealthError(Exception):
    """Base of keyhealth's own errors."""


class ScenarioError(KeyhealthError, ValueError):
    """A scenario is invalid: `path` is the JSON path of the offending value, `problem` says what is wrong."""

    def __init__(self, path: str, problem: str, *, source: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{_middle_clipped(self.path)}: {_middle_clipped(self.problem)}"

    def with_source(self, source: str) -> ScenarioError:
        """Return the same error, now naming the file it came from."""
        return ScenarioError(self.path, self.problem, source=source)


def encodable(text: str) -> bool:
    """False for text with lone surrogates, which cannot be encoded (to a log, a store, an HTTP body)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _middle_clipped(text: str, limit: int = 400) -> str:
    """`text` with its middle cut when long: a huge quoted value goes, the start and the advice at the end stay."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


class SettingError(KeyhealthError, ValueError):
    """An app setting (environment variable) has a value keyhealth cannot use."""

    def __init__(self, setting: str, value: str, problem: str) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        # A value pasted by mistake can be huge: the message quotes its start, enough to recognise it.
        shown = value if len(value) <= 100 else value[:99] + "…"
        super().__init__(f"setting {setting}={shown!r}: {problem}")


class KeyPatternError(KeyhealthError, ValueError):
    """A remediation key pattern is not of the accepted form: `pattern` is it, `problem` says what is wrong."""

    def __init__(self, pattern: str, problem: str) -> None:
        self.pattern = pattern
        self.problem = problem
        super().__init__(f"{pattern!r}: {problem}")


class ReadError(KeyhealthError, RuntimeError):
    """The monitor itself could not read something (its own 401/403, a timeout, a 5xx, throttling past retries).

    Never a fact about usability: whatever depends on it becomes unknown.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


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


class EventBodyError(KeyhealthError, ValueError):
    """A webhook delivery as a whole cannot be read (not JSON, not an event or a list of events, too many)."""


class StateStoreError(KeyhealthError, RuntimeError):
    """The state store failed: unreachable, refused the request, or holds data this version cannot read.

    `what` names the record or operation, `reason` says why; neither ever holds a secret such as an account key.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"state store: {what}: {reason}")


class StaleWriteError(KeyhealthError, RuntimeError):
    """A conditional write lost a race: the record changed, appeared or vanished since the writer read it.

    `what` names the record; `expected_etag` is the ETag the writer held (None: it expected no record);
    `reason` says what the store found instead.
    """

    def __init__(self, what: str, expected_etag: str | None, reason: str) -> None:
        self.what = what
        self.expected_etag = expected_etag
        self.reason = reason
        expected = "no record" if expected_etag is None else f"ETag {expected_etag}"
        super().__init__(f"{what}: expected {expected}, but {reason}")


class DeliveryError(KeyhealthError, RuntimeError):
    """An alert sink did not take an alert. `reason` never holds a secret (no URL, key or token).

    `retryable` is False when sending the same alert again cannot succeed (the sink rejected its
    content); `retry_after` is the wait, in seconds, the sink asked for.
    """

    def __init__(self, sink: str, reason: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        self.sink = sink
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(f"sink {sink}: {reason}")


class AlertConfigError(KeyhealthError, ValueError):
    """The alert configuration (sinks and routes) is unusable; `path` points into its JSON."""

    def __init__(self, setting: str, path: str, problem: str) -> None:
        self.setting = setting
        self.path = path
        self.problem = problem
        super().__init__(f"{setting}: {path}: {problem}")


class RemediationError(KeyhealthError, RuntimeError):
    """A remediation write failed. `denied`: the monitor's identity lacks the permission (retrying cannot help)."""

    def __init__(self, action: str, target: str, reason: str, *, denied: bool = False) -> None:
        self.action = action
        self.target = target
        self.reason = reason
        self.denied = denied
        super().__init__(f"could not {action} {target}: {reason}")


class TokenError(KeyhealthError, ValueError):
    """A bearer token was refused. `reason` says why and never quotes the token."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
