"""Fixtures shared across test packages: one real Azurite for the whole session, and the metrics the code emits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.adapters.state.support import Azurite

# One provider for the test process (OpenTelemetry allows setting it once): read in memory, and through
# Prometheus as `serve` installs it, so its /metrics route can be scraped.
_READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER, PrometheusMetricReader()]))
SPANS = InMemorySpanExporter()
_TRACER_PROVIDER = TracerProvider()
_TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_TRACER_PROVIDER)


class Metrics:
    """Reads what the code emitted: a counter's cumulative value for some attributes."""

    def _points(self, name: str, attributes: dict[str, str]) -> list[Any]:
        data = _READER.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            labels = point.attributes or {}
                            if all(labels.get(k) == v for k, v in attributes.items()):
                                found.append(point)
        return found

    def names(self) -> set[str]:
        """Every instrument that has recorded something in this process."""
        data = _READER.get_metrics_data()
        return {
            metric.name
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str, **attributes: str) -> int:
        """How many series of `name` match the attributes."""
        return len(self._points(name, attributes))

    def count(self, name: str, **attributes: str) -> int:
        """How many values a histogram has recorded."""
        return sum(int(getattr(p, "count", 0)) for p in self._points(name, attributes))

    def value(self, name: str, **attributes: str) -> float:
        data = _READER.get_metrics_data()
        total = 0.0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        labels = point.attributes or {}
                        if isinstance(point, NumberDataPoint) and all(
                            labels.get(k) == v for k, v in attributes.items()
                        ):
                            total += point.value
        return total


@pytest.fixture
def emitted() -> Metrics:
    return Metrics()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real azurite-table on a free loopback port for the whole session; fails (never skips) when not installed."""
    running = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=["sqlite", "tables"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """App settings for a fresh store of each kind: a SQLite file, or fresh tables in the session's Azurite."""
    if request.param == "sqlite":
        return {"KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
    azurite = request.getfixturevalue("azurite")
    return {
        "KEYHEALTH_STATE_STORE": "tables",
        "KEYHEALTH_TABLES_CONNECTION_STRING": azurite.connection_string,
        "KEYHEALTH_TABLE_PREFIX": f"t{uuid.uuid4().hex[:16]}",
    }


@pytest.fixture
def receivers_http() -> Iterator[Any]:
    """A plain-HTTP local receiver (an OTLP collector stand-in) that records what is POSTed."""
    import ssl

    from tests.alerts.receiver import AlertReceiver

    receiver = AlertReceiver(ssl.create_default_context(), plain_http=True)
    receiver.__enter__()
    yield receiver
    receiver.__exit__(None, None, None)
