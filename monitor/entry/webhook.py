"""The Event Grid webhook of `keyhealth serve`: deliveries in either schema, one event or a batch, with
both endpoint handshakes (the validation event, the CloudEvents OPTIONS request) answered only for what
the monitor watches; every refusal logged with its reason and counted."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from monitor.app.events import EventOutcome, handle_events
from monitor.app.monitor import Monitor
from monitor.app.telemetry import count_event
from monitor.domain.errors import EventBodyError
from monitor.entry.connections import (
    ABANDONED,
)
from monitor.formats.events import KeyVaultEvent, RejectedEvent, SubscriptionValidation, parse_delivery

log = logging.getLogger("keyhealth")

MAX_BODY = 1024 * 1024  # Event Grid delivers at most 1 MB per batch
EVENT_CONTENT_TYPES = frozenset(
    {"application/json", "application/cloudevents+json", "application/cloudevents-batch+json"}
)
LOGGED_PER_DELIVERY = 10  # rejected entries logged one by one per delivery; the rest are counted and summed up
# The origin Event Grid names in the CloudEvents abuse-protection handshake; nobody else may subscribe us.
EVENT_GRID_ORIGIN = "eventgrid.azure.net"


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def _known_subscriptions(monitor: Monitor) -> set[str]:
    """The subscriptions (lower-cased ids) of the namespaces the last poll stored."""
    stored = await monitor.store.get_snapshot()
    if stored is None:
        return set()
    namespaces = stored.document.get("namespaces")
    ids = [n.get("id") for n in namespaces if isinstance(n, dict)] if isinstance(namespaces, list) else []
    return {i.split("/")[2].lower() for i in ids if isinstance(i, str) and i.count("/") > 2}


class WebhookRoutes:
    """The webhook half of Server: the state it shares with the rest of the server, and the routes."""

    monitor: Monitor
    events: Counter[str]
    refused: Counter[str]
    _alerts_queued: asyncio.Event
    _body_timeout: float
    _now: Callable[[], datetime]

    def _refuse(
        self, request: web.Request, status: int, reason: str, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        """A request refused as a whole: logged and counted (/healthz `refused`, keyhealth.events), never silent."""
        log.warning("keyhealth: refused %s %s (%d): %s", request.method, request.path, status, reason)
        self.refused[str(status)] += 1
        count_event("unparsed", "refused")
        return json_response(status, {"error": reason}, headers=headers)

    async def options_route(self, request: web.Request) -> web.Response:
        """The CloudEvents abuse-protection handshake (HTTP OPTIONS with WebHook-Request-Origin)."""
        origin = request.headers.get("WebHook-Request-Origin")
        if not origin:
            return self._refuse(request, 400, "OPTIONS needs a WebHook-Request-Origin header")
        if origin.strip().lower() != EVENT_GRID_ORIGIN:
            return self._refuse(request, 403, f"only {EVENT_GRID_ORIGIN} may deliver events here")
        return web.Response(
            status=200, headers={"WebHook-Allowed-Origin": EVENT_GRID_ORIGIN, "WebHook-Allowed-Rate": "*"}
        )

    async def events_route(self, request: web.Request) -> web.Response:
        """An Event Grid delivery: handshake, or a batch of events handled one by one."""
        if request.content_type not in EVENT_CONTENT_TYPES:
            return self._refuse(request, 415, f"content type {request.content_type[:100]!r} is not JSON events")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._refuse(request, 413, f"body over {MAX_BODY} bytes")
        try:
            async with asyncio.timeout(self._body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, 413, f"body over {MAX_BODY} bytes")
        except TimeoutError:
            answer = self._refuse(request, 408, f"the body did not arrive within {self._body_timeout:g} s")
            answer.force_close()  # the connection goes with the answer: the rest of the body is never waited for
            return answer
        except ABANDONED as error:
            # The client went away mid-body (or cut it short): nothing to answer, nothing worth a traceback.
            log.info(
                "keyhealth: %s %s: the client abandoned its body (%s)",
                request.method,
                request.path,
                type(error).__name__,
            )
            self.refused["abandoned"] += 1
            raise web.HTTPBadRequest() from None
        try:
            entries = parse_delivery(body)
        except EventBodyError as error:
            return self._refuse(request, 400, f"unreadable delivery: {error}")
        validation = next((e for e in entries if isinstance(e, SubscriptionValidation)), None)
        if validation is not None:
            refusal = await self._validation_refusal(validation)
            if refusal is not None:
                return self._refuse(request, 403, refusal)
            log.info("keyhealth: answered the Event Grid subscription validation %s", validation.id)
            return json_response(200, {"validationResponse": validation.code})
        outcomes: Counter[str] = Counter()
        rejected: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        events: list[KeyVaultEvent] = []
        for entry in entries:
            if isinstance(entry, RejectedEvent):
                if len(rejected) < LOGGED_PER_DELIVERY:  # a forged batch must not become thousands of lines
                    log.warning("keyhealth: rejected event %s (entry %d): %s", entry.id, entry.index, entry.reason)
                count_event("unparsed", "rejected")
                outcomes["rejected"] += 1
                rejected.append({"index": entry.index, "id": entry.id, "reason": entry.reason})
            else:
                assert isinstance(entry, KeyVaultEvent)  # noqa: S101 - narrows the type; holds by construction
                events.append(entry)
        if len(rejected) > LOGGED_PER_DELIVERY:
            log.warning("keyhealth: rejected %d entries of this delivery in all", len(rejected))
        results = await handle_events(self.monitor, events, now=self._now())
        for event, result in zip(events, results, strict=True):
            if isinstance(result, Exception):
                log.error(
                    "keyhealth: event %s %s failed", event.id, event.event_type, exc_info=(type(result), result, None)
                )
                outcomes["failed"] += 1
                failed.append({"id": event.id, "error": f"{type(result).__name__}: {result}"})
                continue
            outcomes[result.outcome.value] += 1
            if result.outcome is EventOutcome.COALESCED:
                continue  # counted; the re-read it rides on is logged
            log.info(
                "keyhealth: event %s %s: %s %s", event.id, event.event_type, result.outcome.value, result.namespaces
            )
            if result.alerts:
                self._alerts_queued.set()
        if outcomes["coalesced"]:
            log.info("keyhealth: %d events of this delivery coalesced into re-reads", outcomes["coalesced"])
        self.events.update(outcomes)
        summary = {"received": len(entries), "outcomes": dict(outcomes), "rejected": rejected, "failed": failed}
        # A failure is worth Event Grid's retry (handling is idempotent); a rejected entry is not.
        return json_response(500 if failed else 200, summary)

    async def _validation_refusal(self, validation: SubscriptionValidation) -> str | None:
        """None when the subscription being validated is on a topic this monitor watches, else why not.

        A topic is watched when it lies in a subscription the monitor scans: the configured ones, or else
        those its last poll read. Answering any code would let anyone point their own topic at us.
        """
        topic = (validation.topic or "").strip()
        parts = topic.strip("/").split("/")
        if len(parts) < 2 or parts[0].lower() != "subscriptions" or not parts[1]:
            return f"the subscription validation names no Azure topic ({topic[:200]!r})"
        subscription = parts[1].lower()
        watched = {s.lower() for s in self.monitor.subscriptions or ()}
        if not watched:
            watched = await _known_subscriptions(self.monitor)
        if subscription not in watched:
            return f"the topic {topic[:200]!r} is not in a subscription this monitor watches"
        return None
