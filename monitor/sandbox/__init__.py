"""The local Azure stand-in: HTTPS ARM and Key Vault serving a scenario's World, with faults and events.

Used by the tests, the demo and `keyhealth sandbox`; never by the app in Azure. May import
`monitor.domain` and `monitor.formats` (to read scenario files); it behaves like Azure, refusals included.
"""

from monitor.domain.errors import ChangeRejectedError, SandboxError, SandboxNotRunningError, UnknownVaultError
from monitor.sandbox.clock import SandboxClock
from monitor.sandbox.credentials import AsyncStaticTokenCredential, StaticTokenCredential
from monitor.sandbox.events import Delivery, EventSubscription, KeyVaultEvent
from monitor.sandbox.faults import FaultRule, Faults, RateLimit
from monitor.sandbox.requestlog import RequestLog, RequestRecord
from monitor.sandbox.run import run_sandbox
from monitor.sandbox.server import Sandbox

__all__ = [
    "AsyncStaticTokenCredential",
    "ChangeRejectedError",
    "Delivery",
    "EventSubscription",
    "FaultRule",
    "Faults",
    "KeyVaultEvent",
    "RateLimit",
    "RequestLog",
    "RequestRecord",
    "Sandbox",
    "SandboxClock",
    "SandboxError",
    "SandboxNotRunningError",
    "StaticTokenCredential",
    "UnknownVaultError",
    "run_sandbox",
]
