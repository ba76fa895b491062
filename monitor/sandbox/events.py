"""Key Vault events the timeline implies, in the Event Grid or CloudEvents 1.0 envelope, POSTed to a webhook.

What fires, as Key Vault fires it: KeyNewVersionCreated for each new version (a `new_version` change,
a rotate or a create), KeyNearExpiry 30 days before the current version's `exp`, KeyExpired at it,
and VaultAccessPolicyChanged for a `set_access` on a vault that uses access policies. Nothing fires
for deletes, disables, nbf/exp edits or RBAC changes, nor for a vault that does not exist, nor for
anything in a Managed HSM (it publishes no Event Grid events).
Events are planned as the clock passes their instants (and at once for changes an API call makes),
then delivered one per POST in order, each retried a few times; every outcome is recorded.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp

from monitor.domain.model import KeyId, KeyVersion, NewVersion, SetAccess, name_id, vault_id
from monitor.sandbox.state import SandboxState, VaultInfo, current_version, find_version
from monitor.sandbox.wire import unix

Schema = Literal["eventgrid", "cloudevents"]
NEAR_EXPIRY = timedelta(days=30)  # KeyNearExpiry: "defaults to 30 days before expiry"
PREFIX = "Microsoft.KeyVault."
KEY_NEW_VERSION_CREATED = PREFIX + "KeyNewVersionCreated"
KEY_NEAR_EXPIRY = PREFIX + "KeyNearExpiry"
KEY_EXPIRED = PREFIX + "KeyExpired"
VAULT_ACCESS_POLICY_CHANGED = PREFIX + "VaultAccessPolicyChanged"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
SUBSCRIPTION_NAME = "KEYHEALTH-SANDBOX"


def event_time(t: datetime) -> str:
    """Event Grid's time format: seven fractional digits and a Z (2019-07-25T01:08:33.1036736Z)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


@dataclass(frozen=True, slots=True)
class KeyVaultEvent:
    """One Key Vault event, independent of the envelope it travels in."""

    id: str
    type: str
    time: datetime
    topic: str  # the vault's resource id
    subject: str  # the key's name, or the vault's for a vault event
    data: dict[str, Any]

    def eventgrid(self) -> dict[str, Any]:
        """The Event Grid schema envelope, as the published Key Vault samples."""
        return {
            "id": self.id,
            "topic": self.topic,
            "subject": self.subject,
            "eventType": self.type,
            "eventTime": event_time(self.time),
            "data": self.data,
            "dataVersion": "1",
            "metadataVersion": "1",
        }

    def cloudevent(self) -> dict[str, Any]:
        """The CloudEvents 1.0 envelope (structured mode), as the published Key Vault samples."""
        return {
            "source": self.topic,
            "subject": self.subject,
            "type": self.type,
            "time": event_time(self.time),
            "id": self.id,
            "data": self.data,
            "specversion": "1.0",
        }


def key_event(kind: str, at: datetime, info: VaultInfo, key_name: str, version: KeyVersion) -> KeyVaultEvent:
    """A key event; NBF and EXP are strings of Unix seconds, as in every published sample."""
    data = {
        "Id": f"https://{info.host}/keys/{key_name}/{version.version}",
        "VaultName": info.name,
        "ObjectType": "Key",
        "ObjectName": key_name,
        "Version": version.version,
        "NBF": str(unix(version.nbf)) if version.nbf else None,
        "EXP": str(unix(version.exp)) if version.exp else None,
    }
    return KeyVaultEvent(str(uuid.uuid4()), kind, at, info.resource_id, key_name, data)


def vault_event(at: datetime, info: VaultInfo) -> KeyVaultEvent:
    """VaultAccessPolicyChanged: the object is the vault itself."""
    data = {
        "Id": f"https://{info.host}/",
        "VaultName": info.name,
        "ObjectType": "Vault",
        "ObjectName": info.name,
        "Version": None,
        "NBF": None,
        "EXP": None,
    }
    return KeyVaultEvent(str(uuid.uuid4()), VAULT_ACCESS_POLICY_CHANGED, at, info.resource_id, info.name, data)


class EventPlanner:
    """Which events are due as the clock moves: each fires once, in time order.

    Changes fire when the clock has reached them (those at or before `start` are history and never
    fire); expiry events fire for instants in (last planned, now]. Moving the clock back plans nothing
    new until it passes the furthest point reached.
    """

    def __init__(self, state: SandboxState, start: datetime) -> None:
        self.state = state
        self._watermark = start
        self._done = {index for index, change in enumerate(state.changes) if change.at <= start}

    def due(self, now: datetime) -> list[KeyVaultEvent]:
        events = self._change_events(now)
        if now > self._watermark:
            events.extend(self._expiry_events(self._watermark, now))
            self._watermark = now
        return sorted(events, key=lambda event: event.time)

    def _change_events(self, now: datetime) -> list[KeyVaultEvent]:
        events = []
        for index, change in enumerate(self.state.changes):
            if index in self._done or change.at > now:
                continue
            self._done.add(index)
            info = self._vault(change.vault)
            vault = self.state.vault_state(info, change.at) if info else None
            if info is None or info.managed_hsm or vault is None or not vault.exists:
                continue
            if isinstance(change, NewVersion):
                key_id: KeyId = (info.id, name_id(change.key))
                state = self.state.key_state(key_id, change.at)
                version = find_version(state, change.version.version, change.at) or change.version
                events.append(key_event(KEY_NEW_VERSION_CREATED, change.at, info, self.state.key_name(key_id), version))
            elif isinstance(change, SetAccess) and not vault.rbac:
                events.append(vault_event(change.at, info))
        return events

    def _vault(self, uri: str) -> VaultInfo | None:
        return self.state.vault_by_id(vault_id(uri))

    def _expiry_events(self, start: datetime, end: datetime) -> list[KeyVaultEvent]:
        events = []
        for key_id in self.state.key_ids():
            info = self._vault(key_id[0])
            if info is None or info.managed_hsm:
                continue
            # Each version's exp as it stood at some point in the window: its candidate instants.
            moments = {start, end, *(c.at for c in self.state.key_changes(key_id) if start < c.at <= end)}
            candidates: set[tuple[datetime, str]] = set()
            for moment in moments:
                for version in self.state.key_state(key_id, moment).versions:
                    if version.exp is not None:
                        candidates.add((version.exp - NEAR_EXPIRY, KEY_NEAR_EXPIRY))
                        candidates.add((version.exp, KEY_EXPIRED))
            for instant, kind in sorted(candidates):
                if not start < instant <= end or not self.state.vault_exists(info, instant):
                    continue
                state = self.state.key_state(key_id, instant)
                current = current_version(state, instant) if state.exists and not state.deleted else None
                if current is None or current.exp is None:
                    continue
                fires_at = current.exp - NEAR_EXPIRY if kind == KEY_NEAR_EXPIRY else current.exp
                if fires_at == instant:
                    events.append(key_event(kind, instant, info, self.state.key_name(key_id), current))
        return events


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one event's delivery ended."""

    event: KeyVaultEvent
    status: int | None  # the receiver's last answer; None when it never answered
    attempts: int
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class EventSubscription:
    """A webhook the sandbox delivers to, with its own planner, queue and delivery record."""

    def __init__(
        self,
        url: str,
        schema: Schema,
        planner: EventPlanner,
        *,
        ssl_context: ssl.SSLContext | bool,
        attempts: int = 3,
        backoff: float = 0.1,
        timeout: float = 10.0,
        handshake: bool = False,
    ) -> None:
        if schema not in ("eventgrid", "cloudevents"):
            raise ValueError(f"schema must be 'eventgrid' or 'cloudevents', got {schema!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.url = url
        self.schema = schema
        self.planner = planner
        self.attempts = attempts
        self.backoff = backoff
        self.handshake = handshake
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._validated = not handshake
        self.queue: asyncio.Queue[KeyVaultEvent] = asyncio.Queue()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def delivered(self) -> list[KeyVaultEvent]:
        """The events the receiver accepted, in delivery order."""
        return [d.event for d in self.deliveries if d.delivered]

    def plan(self, now: datetime) -> None:
        for event in self.planner.due(now):
            self.queue.put_nowait(event)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Deliver queued events one at a time, in order, until cancelled."""
        while True:
            event = await self.queue.get()
            try:
                if not self._validated:
                    self._validated = await self._validate(session)
                if self._validated:
                    delivery = await self._deliver(session, event)
                else:  # Event Grid delivers nothing to an endpoint that has not proved it wants the events
                    delivery = Delivery(event, None, 0, "endpoint validation failed")
                with self._lock:
                    self._deliveries.append(delivery)
            finally:
                self.queue.task_done()

    def _body_and_headers(self, event: KeyVaultEvent, attempt: int) -> tuple[bytes, dict[str, str]]:
        headers = {
            "aeg-event-type": "Notification",
            "aeg-subscription-name": SUBSCRIPTION_NAME,
            "aeg-delivery-count": str(attempt),
            "aeg-data-version": "1",
            "aeg-metadata-version": "1",
        }
        if self.schema == "cloudevents":
            headers["Content-Type"] = "application/cloudevents+json; charset=utf-8"
            return json.dumps(event.cloudevent()).encode(), headers
        # Event Grid posts an array, one event per request unless batching is configured.
        headers["Content-Type"] = "application/json; charset=utf-8"
        return json.dumps([event.eventgrid()]).encode(), headers

    async def _deliver(self, session: aiohttp.ClientSession, event: KeyVaultEvent) -> Delivery:
        status: int | None = None
        error: str | None = None
        attempt = 0
        for attempt in range(1, self.attempts + 1):
            body, headers = self._body_and_headers(event, attempt - 1)
            try:
                async with session.post(
                    self.url, data=body, headers=headers, ssl=self._ssl, timeout=self._timeout
                ) as response:
                    await response.read()
                    status, error = response.status, None
            except (aiohttp.ClientError, TimeoutError) as failure:
                status, error = None, f"{type(failure).__name__}: {failure}"
            # Event Grid does not retry 400 Bad Request or 413 Request Entity Too Large.
            if status is not None and (200 <= status < 300 or status in (400, 413)):
                break
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        if error is None and status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        return Delivery(event, status, attempt, error)

    async def _validate(self, session: aiohttp.ClientSession) -> bool:
        """The endpoint handshake: a SubscriptionValidationEvent (Event Grid) or an OPTIONS request (CloudEvents)."""
        try:
            if self.schema == "cloudevents":
                headers = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"}
                async with session.options(self.url, headers=headers, ssl=self._ssl, timeout=self._timeout) as reply:
                    return reply.status == 200 and "WebHook-Allowed-Origin" in reply.headers
            code = str(uuid.uuid4())
            validation = {
                "id": str(uuid.uuid4()),
                "topic": "/subscriptions/00000000-0000-0000-0000-000000000000",
                "subject": "",
                "data": {"validationCode": code},
                "eventType": VALIDATION_EVENT,
                "eventTime": event_time(datetime.now(UTC)),
                "metadataVersion": "1",
                "dataVersion": "1",
            }
            headers = {"aeg-event-type": "SubscriptionValidation", "Content-Type": "application/json"}
            async with session.post(
                self.url, data=json.dumps([validation]), headers=headers, ssl=self._ssl, timeout=self._timeout
            ) as reply:
                answer = await reply.json(content_type=None) if reply.status == 200 else None
            return isinstance(answer, dict) and answer.get("validationResponse") == code
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
