"""Alert sinks, one module each, built from the alert configuration."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from azure.core.credentials import AzureKeyCredential
from azure.core.credentials_async import AsyncTokenCredential

from monitor.adapters.alerts.eventgrid import EventGridSink
from monitor.adapters.alerts.http import HttpPoster
from monitor.adapters.alerts.pagerduty import EVENTS_URL, PagerDutySink
from monitor.adapters.alerts.slack import SlackSink
from monitor.adapters.alerts.teams import TeamsSink
from monitor.adapters.alerts.webhook import WebhookSink
from monitor.app.ports import AlertSink, SinkSpec

__all__ = ["SinkSet", "build_sinks"]


class SinkSet:
    """The configured sinks by name, and what they share (one HTTP session)."""

    def __init__(self, sinks: dict[str, AlertSink], poster: HttpPoster) -> None:
        self.sinks = sinks
        self._poster = poster

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.close()
        await self._poster.close()


def build_sinks(
    specs: Sequence[SinkSpec],
    *,
    ca_bundle: str | None = None,
    timeout: float = 10.0,
    credential: Callable[[], AsyncTokenCredential] | None = None,
) -> SinkSet:
    """One sink per spec. An Event Grid sink without a key uses `credential()` (the app's managed identity,
    which needs the EventGrid Data Sender role on the topic); ValueError when none is given."""
    poster = HttpPoster(ca_bundle=ca_bundle)
    sinks: dict[str, AlertSink] = {}
    for spec in specs:
        sink: AlertSink
        if spec.kind == "webhook":
            assert spec.url is not None  # noqa: S101 - narrows the type; holds by construction
            sink = WebhookSink(spec.name, spec.url, poster, secret=spec.secret, timeout=timeout)
        elif spec.kind == "teams":
            assert spec.url is not None  # noqa: S101 - narrows the type; holds by construction
            sink = TeamsSink(spec.name, spec.url, poster, timeout=timeout)
        elif spec.kind == "slack":
            assert spec.url is not None  # noqa: S101 - narrows the type; holds by construction
            sink = SlackSink(spec.name, spec.url, poster, timeout=timeout)
        elif spec.kind == "pagerduty":
            assert spec.routing_key is not None  # noqa: S101 - narrows the type; holds by construction
            sink = PagerDutySink(spec.name, spec.routing_key, poster, url=spec.url or EVENTS_URL, timeout=timeout)
        else:
            assert spec.endpoint is not None  # noqa: S101 - narrows the type; holds by construction
            if spec.key is not None:
                auth: AzureKeyCredential | AsyncTokenCredential = AzureKeyCredential(spec.key)
            elif credential is not None:
                auth = credential()
            else:
                raise ValueError(f"sink {spec.name}: an Event Grid sink needs key_setting or a managed identity")
            sink = EventGridSink(spec.name, spec.endpoint, auth, ca_bundle=ca_bundle, timeout=timeout)
        sinks[spec.name] = sink
    return SinkSet(sinks, poster)
