"""Composition root: credentials, SDK clients and adapters, built once from Settings."""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from azure.core.credentials_async import AsyncTokenCredential

from monitor.adapters.access import VaultAccess
from monitor.adapters.alerts import SinkSet, build_sinks
from monitor.adapters.audit_logs import AuditLogObserver
from monitor.adapters.azure_clients import AzureClients, AzureOptions
from monitor.adapters.entra import EntraTokenValidator
from monitor.adapters.geo_dr import GeoDrReader
from monitor.adapters.keyvault import KeyVaultKeys
from monitor.adapters.resourcegraph import ResourceGraphInventory
from monitor.adapters.rotation import AzureRemediator
from monitor.adapters.servicebus import ServiceBusInventory
from monitor.app.alerting import Alerting
from monitor.app.coalescing import EventCoalescer
from monitor.app.monitor import Monitor
from monitor.app.pairings import GeoDrPairings, PairedInventory
from monitor.app.ports import InventoryReader
from monitor.app.reading import Readers
from monitor.app.remediation import Remediation
from monitor.app.state import StateStore
from monitor.entry.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider


def azure_options(settings: Settings) -> AzureOptions:
    """Endpoints, trust and patience for every Azure client."""
    return AzureOptions(
        arm_endpoint=settings.arm_endpoint,
        keyvault_endpoint=settings.keyvault_endpoint,
        ca_bundle=settings.ca_bundle,
        retries=settings.http_retries,
        timeout_seconds=settings.http_timeout_seconds,
        keyvault_share=settings.keyvault_share / 100,
    )


def build_credential(settings: Settings) -> AsyncTokenCredential:
    """A static token for a local stand-in, else DefaultAzureCredential (managed identity, az login, ...)."""
    if settings.static_token:
        from monitor.sandbox.credentials import AsyncStaticTokenCredential

        return AsyncStaticTokenCredential(settings.static_token)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


@asynccontextmanager
async def azure_readers(
    settings: Settings, *, credential: AsyncTokenCredential | None = None
) -> AsyncIterator[Readers]:
    """The Azure readers for one run; clients (and a credential built here) are closed on exit."""
    own_credential = credential is None
    active = credential if credential is not None else build_credential(settings)
    clients = AzureClients(active, azure_options(settings))
    try:
        yield build_readers(clients, settings)
    finally:
        await clients.close()
        if own_credential:
            await active.close()


# How many Geo-DR pairings not yet read (or due) one poll waits for, and how many more it reads beside the rest
# of the poll (for the next); the others wait for a later poll. A pairing read costs a poll about 3 ms of CPU.
POLL_WAITS_FOR_PAIRINGS = 1000
POLL_READS_PAIRINGS_BESIDE = 1000


def build_readers(
    clients: AzureClients, settings: Settings, *, waits_for_pairings: int | None = None, pairings_beside: int = 0
) -> Readers:
    """The Azure readers over one set of SDK clients. The pairing budgets: see PairedInventory (None: all)."""
    arm = ServiceBusInventory(clients)
    inventory: InventoryReader = ResourceGraphInventory(clients, arm) if settings.inventory == "resource-graph" else arm
    pairings = None
    if settings.geo_dr_refresh_minutes > 0:
        refresh = timedelta(minutes=settings.geo_dr_refresh_minutes)
        pairings = GeoDrPairings(GeoDrReader(clients), refresh=refresh)
        inventory = PairedInventory(inventory, pairings, waits_for=waits_for_pairings, reads_beside=pairings_beside)
    observer = None
    if settings.audit_logs == "on":
        observer = AuditLogObserver(
            clients,
            logs_endpoint=settings.logs_endpoint,
            workspaces=settings.audit_workspaces,
            lookback=timedelta(minutes=settings.audit_lookback_minutes),
        )
    return Readers(
        inventory=inventory,
        keys=KeyVaultKeys(clients),
        access=VaultAccess(clients),
        pairings=pairings,
        observer=observer,
    )


def build_store(settings: Settings, credential: AsyncTokenCredential) -> StateStore:
    """The state store the settings name: SQLite on one machine, Azure Table Storage for Functions."""
    if settings.state_store == "tables":
        from monitor.adapters.state_tables import TableStateStore

        if settings.tables_connection_string:
            return TableStateStore.from_connection_string(
                settings.tables_connection_string, table_prefix=settings.table_prefix
            )
        assert settings.tables_endpoint is not None  # noqa: S101 - narrows the type; Settings.from_environment checks one is set
        return TableStateStore.from_endpoint(settings.tables_endpoint, credential, table_prefix=settings.table_prefix)
    from monitor.adapters.state_sqlite import SqliteStateStore

    return SqliteStateStore(settings.sqlite_path or "keyhealth-state.sqlite")


def instance_name() -> str:
    """This process's name in the poll lease: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def build_sinks_for(settings: Settings, credential: AsyncTokenCredential) -> SinkSet:
    """The alert sinks KEYHEALTH_ALERTS configures (Event Grid without a key: the app's identity)."""
    return build_sinks(
        settings.alert_config.sinks,
        ca_bundle=settings.ca_bundle,
        timeout=settings.alert_policy.send_timeout,
        credential=lambda: credential,
    )


def build_alerting(settings: Settings, store: StateStore) -> Alerting:
    return Alerting(store=store, router=settings.alert_config.router, policy=settings.alert_policy)


# A poll of a large fleet holds millions of objects while it builds millions more. At CPython's default (a young
# collection every 700 new objects, each older pass walking everything that survived) the collector took a
# quarter of a 10,000-namespace poll's CPU; every 50,000 it takes a few percent (bench/fleet_bench.py).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect young objects less often (never more often than the process already does)."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def build_token_validator(settings: Settings) -> EntraTokenValidator | None:
    """The Entra ID bearer-token check `serve` applies, or None when no tenant is configured."""
    if not settings.auth_tenant_id:
        return None
    return EntraTokenValidator(
        tenant=settings.auth_tenant_id,
        audiences=settings.auth_audience,
        authority=settings.auth_authority,
        allowed_callers=settings.auth_allowed_callers,
        ca_bundle=settings.ca_bundle,
        timeout=settings.http_timeout_seconds,
    )


# The Azure SDK logs every request and response (headers included) at INFO: ~700 lines a poll of 11 namespaces.
AZURE_LOGGERS = ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity")


def configure_logging(settings: Settings) -> None:
    """KEYHEALTH_LOG_LEVEL: keyhealth's own level; the Azure SDK at WARNING unless it is `debug`."""
    level = getattr(logging, settings.log_level.upper())
    for name in AZURE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == logging.DEBUG else logging.WARNING)
    if level != logging.INFO:  # at info the host's (or the root's) level decides, as before
        logging.getLogger("keyhealth").setLevel(level)


def build_monitor(settings: Settings, *, credential: AsyncTokenCredential | None = None) -> Monitor:
    """A long-lived Monitor: a Functions worker keeps it for its lifetime, on the host's one event loop."""
    from azure.core.settings import settings as azure_settings

    configure_logging(settings)

    # Each Azure SDK call becomes a span under the poll's or event's (a no-op without a tracer provider).
    azure_settings.tracing_enabled = True
    tune_garbage_collector()
    active = credential if credential is not None else build_credential(settings)
    clients = AzureClients(active, azure_options(settings))
    store = build_store(settings, active)
    # Every instance on this store draws each vault's request share from one budget, not a share each.
    clients.limiter.share_budget(store.take_budget)
    sinks = build_sinks_for(settings, active)
    coalescer = EventCoalescer(settings.event_coalesce_seconds)

    async def close() -> None:
        await coalescer.close()
        await clients.close()
        await sinks.close()
        await store.close()
        if credential is None:
            await active.close()

    return Monitor(
        readers=build_readers(
            clients,
            settings,
            waits_for_pairings=POLL_WAITS_FOR_PAIRINGS,
            pairings_beside=POLL_READS_PAIRINGS_BESIDE,
        ),
        store=store,
        close=close,
        thresholds=settings.thresholds,
        instance=instance_name(),
        subscriptions=settings.subscriptions,
        concurrency=settings.concurrency,
        alerting=build_alerting(settings, store),
        sinks=sinks.sinks,
        coalescer=coalescer,
        remediation=Remediation(
            AzureRemediator(clients, settings.remediation_policy), KeyVaultKeys(clients), settings.remediation_policy
        ),
    )


def telemetry_exports(
    environ: Mapping[str, str], *, prometheus: bool, extra_readers: Sequence[MetricReader] = ()
) -> tuple[list[MetricReader], list[SpanProcessor]]:
    """The metric readers and span processors the standard settings ask for: OTLP (http/protobuf) when
    OTEL_EXPORTER_OTLP_ENDPOINT is set, a Prometheus reader for `serve`'s /metrics when asked, and
    `extra_readers` (the demo's in-memory one)."""
    readers: list[MetricReader] = list(extra_readers)
    processors: list[SpanProcessor] = []
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics")))
        processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    return readers, processors


def telemetry_resource(environ: Mapping[str, str]) -> Resource:
    """service.name is `keyhealth` unless OTEL_SERVICE_NAME says otherwise (several monitors, one backend)."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "").strip() or "keyhealth"})


def telemetry_providers(
    environ: Mapping[str, str], *, prometheus: bool, extra_readers: Sequence[MetricReader] = ()
) -> tuple[MeterProvider, TracerProvider]:
    """A meter and a tracer provider exporting what telemetry_exports sets up."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    readers, processors = telemetry_exports(environ, prometheus=prometheus, extra_readers=extra_readers)
    resource = telemetry_resource(environ)
    tracer_provider = TracerProvider(resource=resource)
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    return MeterProvider(metric_readers=readers, resource=resource), tracer_provider


def configure_telemetry(
    *, prometheus: bool, environ: Mapping[str, str] | None = None, extra_readers: Sequence[MetricReader] = ()
) -> bool:
    """Install this process's meter and tracer providers once.

    With APPLICATIONINSIGHTS_CONNECTION_STRING set, the Azure Monitor distro installs them (metrics, spans
    and log records to Application Insights) with the other exports added; otherwise the SDK's own
    providers (see telemetry_providers). Returns False, changing nothing, when providers are already
    installed (the Functions worker, a host or a test set them).
    """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider

    if isinstance(metrics.get_meter_provider(), MeterProvider):
        return False
    environ = os.environ if environ is None else environ
    connection_string = environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if connection_string:
        from azure.monitor.opentelemetry import configure_azure_monitor

        readers, processors = telemetry_exports(environ, prometheus=prometheus, extra_readers=extra_readers)
        configure_azure_monitor(
            connection_string=connection_string,
            resource=telemetry_resource(environ),
            metric_readers=readers,
            span_processors=processors,
            # Our own log lines only: the SDKs' HTTP chatter would cost ingestion and bury them.
            logger_name="keyhealth",
            # The portal's live view and process counters: the Functions host reports its own, and outside
            # Azure both only retry unreachable endpoints in the background.
            enable_live_metrics=False,
            enable_performance_counters=False,
        )
        return True
    meter_provider, tracer_provider = telemetry_providers(environ, prometheus=prometheus, extra_readers=extra_readers)
    metrics.set_meter_provider(meter_provider)
    trace.set_tracer_provider(tracer_provider)
    return True
