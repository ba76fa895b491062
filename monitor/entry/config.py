"""One frozen Settings object built from app settings (environment variables), each documented."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from monitor.app.alerting import AlertPolicy
from monitor.domain.errors import AlertConfigError, SettingError, encodable
from monitor.domain.findings import Thresholds
from monitor.domain.remediation import Action, Mode, RemediationPolicy, parse_key_pattern
from monitor.entry.alert_config import AlertConfig, parse_alert_config
from monitor.entry.setting_values import (
    SettingSpec,
    parse_actions,
    parse_audiences,
    parse_choice,
    parse_existing_file,
    parse_guids,
    parse_https_url,
    parse_key_patterns,
    parse_ncrontab,
    parse_number,
    parse_patterns,
    parse_sink_names,
    parse_subscriptions,
    parse_table_prefix,
    parse_tenant,
    parse_text,
    parse_whole,
)

SETTINGS: dict[str, SettingSpec] = {
    "warning_days": SettingSpec(
        "KEYHEALTH_WARNING_DAYS",
        "30",
        "A predicted revocation (or key expiry) this many days ahead or closer is a warning.",
        parse_number(0, 3650, "a number of days, such as 30 or 0.5"),
    ),
    "critical_days": SettingSpec(
        "KEYHEALTH_CRITICAL_DAYS",
        "7",
        "A predicted revocation (or key expiry) this many days ahead or closer is critical.",
        parse_number(0, 3650, "a number of days, such as 7 or 0.5"),
    ),
    "subscriptions": SettingSpec(
        "KEYHEALTH_SUBSCRIPTIONS",
        "",
        "Comma-separated subscription ids to scan; empty: every subscription the identity can see.",
        parse_subscriptions,
    ),
    "arm_endpoint": SettingSpec(
        "KEYHEALTH_ARM_ENDPOINT",
        "https://management.azure.com",
        "Azure Resource Manager base URL (another cloud, or a local stand-in).",
        parse_https_url(optional=False),
    ),
    "keyvault_endpoint": SettingSpec(
        "KEYHEALTH_KEYVAULT_ENDPOINT",
        "",
        "Reach every vault under this base URL by host name (a local stand-in); empty: each vault's own URI.",
        parse_https_url(optional=True),
    ),
    "ca_bundle": SettingSpec(
        "KEYHEALTH_CA_BUNDLE",
        "",
        "PEM file of extra certificate authorities to trust (a local stand-in); empty: the system's.",
        parse_existing_file,
    ),
    "static_token": SettingSpec(
        "KEYHEALTH_STATIC_TOKEN",
        "",
        "Bearer token for a local stand-in instead of DefaultAzureCredential; never set it against Azure.",
        parse_text,
        secret=True,
    ),
    "http_retries": SettingSpec(
        "KEYHEALTH_HTTP_RETRIES",
        "3",
        "Retries of a failed Azure request (429 waits for Retry-After; others back off exponentially).",
        parse_whole(0, 10, "a retry count"),
    ),
    "http_timeout_seconds": SettingSpec(
        "KEYHEALTH_HTTP_TIMEOUT_SECONDS",
        "30",
        "Seconds to wait for one Azure response before retrying or giving up (then: unknown).",
        parse_number(1, 600, "a number of seconds"),
    ),
    "poll_schedule": SettingSpec(
        "KEYHEALTH_POLL_SCHEDULE",
        "0 */5 * * * *",
        "NCRONTAB schedule of the full poll (Functions timer and `serve`); Service Bus polls every 5 minutes.",
        parse_ncrontab,
    ),
    "state_store": SettingSpec(
        "KEYHEALTH_STATE_STORE",
        "sqlite",
        "Where polls and events remember state: sqlite (one machine) or tables (Azure Table Storage).",
        parse_choice("sqlite", "tables"),
    ),
    "sqlite_path": SettingSpec(
        "KEYHEALTH_SQLITE_PATH",
        "keyhealth-state.sqlite",
        "SQLite state file for the sqlite store.",
        parse_text,
    ),
    "tables_endpoint": SettingSpec(
        "KEYHEALTH_TABLES_ENDPOINT",
        "",
        "Table service URL for the tables store, reached with the app's managed identity.",
        parse_https_url(optional=True),
    ),
    "tables_connection_string": SettingSpec(
        "KEYHEALTH_TABLES_CONNECTION_STRING",
        "",
        "Connection string for the tables store instead of an endpoint (Azurite locally); a secret.",
        parse_text,
        secret=True,
    ),
    "table_prefix": SettingSpec(
        "KEYHEALTH_TABLE_PREFIX",
        "keyhealth",
        "Prefix of the tables store's table names, so deployments can share an account.",
        parse_table_prefix,
    ),
    "concurrency": SettingSpec(
        "KEYHEALTH_CONCURRENCY",
        "32",
        "Key reads in flight at once during a scan.",
        parse_whole(1, 1024, "a number of requests"),
    ),
    "keyvault_share": SettingSpec(
        "KEYHEALTH_KEYVAULT_SHARE",
        "50",
        "Percent of each vault's published request limit (4,000 per 10 s for software keys, 2,000 for HSM keys; "
        "a Managed HSM's 1,100 key reads a second) "
        "the key reads may use; the rest is left to the vault's other users.",
        parse_number(1, 100, "a percentage"),
    ),
    "inventory": SettingSpec(
        "KEYHEALTH_INVENTORY",
        "resource-graph",
        "How namespaces are found: `resource-graph` (one paged query for every subscription, ARM listing when it "
        "is refused) or `arm` (a listing per subscription).",
        parse_choice("resource-graph", "arm"),
    ),
    "geo_dr_refresh_minutes": SettingSpec(
        "KEYHEALTH_GEO_DR_REFRESH_MINUTES",
        "360",
        "How long a namespace's Geo-DR pairing, once read, is taken as read before it is read again (each "
        "namespace falls due within the second half of it); the partner's access is read every poll; 0: pairings "
        "are not read.",
        parse_number(0, 1440, "a number of minutes"),
    ),
    "audit_logs": SettingSpec(
        "KEYHEALTH_AUDIT_LOGS",
        "off",
        "`on`: read the service's own key accesses from the vaults' Key Vault audit logs (AuditEvent, in Log "
        "Analytics) each poll: its poll phase, its failing calls, the keys it dropped; `off`: predict only.",
        parse_choice("off", "on"),
    ),
    "audit_workspaces": SettingSpec(
        "KEYHEALTH_AUDIT_WORKSPACES",
        "",
        "Comma-separated Log Analytics workspace ids (customer ids, GUIDs) to query, every vault taken to send its "
        "AuditEvent logs there; empty: found from each vault's diagnostic settings (which says which vaults send "
        "none).",
        parse_guids,
    ),
    "logs_endpoint": SettingSpec(
        "KEYHEALTH_LOGS_ENDPOINT",
        "https://api.loganalytics.io",
        "The Log Analytics query API's base URL (another cloud, or a local stand-in).",
        parse_https_url(optional=False),
    ),
    "audit_lookback_minutes": SettingSpec(
        "KEYHEALTH_AUDIT_LOOKBACK_MINUTES",
        "16",
        "How far back each poll reads the audit logs: three of the service's polls and a margin by default.",
        parse_number(6, 120, "a number of minutes"),
    ),
    "log_level": SettingSpec(
        "KEYHEALTH_LOG_LEVEL",
        "info",
        "Log level of keyhealth's own lines: debug, info, warning or error. Only `debug` lets the Azure SDK's "
        "per-request HTTP logging through; otherwise the SDK logs at WARNING.",
        parse_choice("debug", "info", "warning", "error"),
    ),
    "webhook_secret": SettingSpec(
        "KEYHEALTH_WEBHOOK_SECRET",
        "",
        "Shared secret `keyhealth serve` accepts on its routes (?code= or x-keyhealth-key); a secret.",
        parse_text,
        secret=True,
    ),
    "auth_tenant_id": SettingSpec(
        "KEYHEALTH_AUTH_TENANT_ID",
        "",
        "Microsoft Entra tenant whose bearer tokens `keyhealth serve` accepts (Event Grid's Entra ID delivery, "
        "scrapers); empty: no tokens.",
        parse_tenant,
    ),
    "auth_audience": SettingSpec(
        "KEYHEALTH_AUTH_AUDIENCE",
        "",
        "Comma-separated audiences a bearer token must carry: the app registration's application id and/or URI.",
        parse_audiences,
    ),
    "auth_authority": SettingSpec(
        "KEYHEALTH_AUTH_AUTHORITY",
        "https://login.microsoftonline.com",
        "Microsoft Entra authority that issues the tokens and publishes their signing keys (another cloud's).",
        parse_https_url(optional=False),
    ),
    "auth_allowed_callers": SettingSpec(
        "KEYHEALTH_AUTH_ALLOWED_CALLERS",
        "",
        "Comma-separated client application ids (appid/azp) or object ids (oid) whose tokens are accepted; "
        "empty: any caller with a valid token for the audience.",
        parse_guids,
    ),
    "alerts": SettingSpec(
        "KEYHEALTH_ALERTS",
        "",
        "Alert sinks and routes: JSON, or @ and a JSON file's path (README, Alerts); empty: the log only.",
        parse_text,
    ),
    "alert_renotify_hours": SettingSpec(
        "KEYHEALTH_ALERT_RENOTIFY_HOURS",
        "4",
        "Re-notify an unresolved critical or revoked incident this often; 0: never.",
        parse_number(0, 24 * 30, "a number of hours"),
    ),
    "alert_retry_seconds": SettingSpec(
        "KEYHEALTH_ALERT_RETRY_SECONDS",
        "30",
        "First wait before resending an alert a sink refused; it doubles up to 15 minutes.",
        parse_number(1, 3600, "a number of seconds"),
    ),
    "alert_give_up_hours": SettingSpec(
        "KEYHEALTH_ALERT_GIVE_UP_HOURS",
        "24",
        "Stop resending an alert this long after it was made; it is logged as undeliverable.",
        parse_number(0.01, 24 * 30, "a number of hours"),
    ),
    "event_coalesce_seconds": SettingSpec(
        "KEYHEALTH_EVENT_COALESCE_SECONDS",
        "10",
        "Events for the same key (or vault) within this many seconds share one Key Vault re-read: the first "
        "reads at once, the rest once at the window's end; 0: every event re-reads.",
        parse_number(0, 300, "a number of seconds"),
    ),
    "watchdog_sinks": SettingSpec(
        "KEYHEALTH_WATCHDOG_SINKS",
        "",
        "Comma-separated sinks of KEYHEALTH_ALERTS that get a Watchdog notice (always firing, severity info) "
        "after complete polls: a dead-man's switch for the receiver; empty: off.",
        parse_sink_names,
    ),
    "watchdog_minutes": SettingSpec(
        "KEYHEALTH_WATCHDOG_MINUTES",
        "60",
        "At most one Watchdog notice per this many minutes (across every instance).",
        parse_number(5, 24 * 60, "a number of minutes"),
    ),
    "delivery_schedule": SettingSpec(
        "KEYHEALTH_DELIVERY_SCHEDULE",
        "*/15 * * * * *",
        "NCRONTAB schedule on which queued alerts are sent (Functions timer; `serve` also sends at once).",
        parse_ncrontab,
    ),
    "portal_url": SettingSpec(
        "KEYHEALTH_PORTAL_URL",
        "https://portal.azure.com",
        "Azure portal base URL for links in alerts (another cloud's portal).",
        parse_https_url(optional=False),
    ),
    "remediation": SettingSpec(
        "KEYHEALTH_REMEDIATION",
        "off",
        "Remediation: off, dry-run (plan, log and alert what would be done) or on (act).",
        parse_choice("off", "dry-run", "on"),
    ),
    "remediation_actions": SettingSpec(
        "KEYHEALTH_REMEDIATION_ACTIONS",
        "rotate,recover",
        "Actions remediation may take: rotate, recover, unpin (unpin only when listed).",
        parse_actions,
    ),
    "remediation_keys": SettingSpec(
        "KEYHEALTH_REMEDIATION_KEYS",
        "",
        "Keys remediation may rotate or recover: comma-separated key URLs, https://<vault host>/keys/<name>, the "
        "name may use * and ?; empty: none.",
        parse_key_patterns,
    ),
    "remediation_namespaces": SettingSpec(
        "KEYHEALTH_REMEDIATION_NAMESPACES",
        "",
        "Namespaces remediation may unpin: comma-separated patterns on namespace names; empty: none.",
        parse_patterns,
    ),
    "remediation_rotate_days": SettingSpec(
        "KEYHEALTH_REMEDIATION_ROTATE_DAYS",
        "7",
        "Rotate a key when its expiry would revoke a namespace within this many days.",
        parse_number(0.01, 365, "a number of days"),
    ),
    "remediation_key_lifetime_days": SettingSpec(
        "KEYHEALTH_REMEDIATION_KEY_LIFETIME_DAYS",
        "365",
        "Expiry of a version remediation creates when the key has no rotation policy expiry.",
        parse_number(1, 3650, "a number of days"),
    ),
    "remediation_max_per_hour": SettingSpec(
        "KEYHEALTH_REMEDIATION_MAX_PER_HOUR",
        "10",
        "At most this many remediation writes an hour, across instances.",
        parse_whole(1, 1000, "a number of actions"),
    ),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything keyhealth reads from its environment, validated."""

    warning_days: float = 30.0
    critical_days: float = 7.0
    subscriptions: tuple[str, ...] | None = None
    arm_endpoint: str = "https://management.azure.com"
    keyvault_endpoint: str | None = None
    ca_bundle: str | None = None
    static_token: str | None = None
    http_retries: int = 3
    http_timeout_seconds: float = 30.0
    poll_schedule: str = "0 */5 * * * *"
    state_store: str = "sqlite"
    sqlite_path: str | None = "keyhealth-state.sqlite"
    tables_endpoint: str | None = None
    tables_connection_string: str | None = None
    table_prefix: str = "keyhealth"
    concurrency: int = 32
    keyvault_share: float = 50.0
    inventory: str = "resource-graph"
    geo_dr_refresh_minutes: float = 360.0
    audit_logs: str = "off"
    audit_workspaces: tuple[str, ...] = ()
    logs_endpoint: str = "https://api.loganalytics.io"
    audit_lookback_minutes: float = 16.0
    log_level: str = "info"
    webhook_secret: str | None = None
    auth_tenant_id: str | None = None
    auth_audience: tuple[str, ...] = ()
    auth_authority: str = "https://login.microsoftonline.com"
    auth_allowed_callers: tuple[str, ...] = ()
    alerts: str | None = None
    alert_renotify_hours: float = 4.0
    alert_retry_seconds: float = 30.0
    alert_give_up_hours: float = 24.0
    event_coalesce_seconds: float = 10.0
    watchdog_sinks: tuple[str, ...] = ()
    watchdog_minutes: float = 60.0
    delivery_schedule: str = "*/15 * * * * *"
    portal_url: str = "https://portal.azure.com"
    remediation: str = "off"
    remediation_actions: frozenset[str] = frozenset({"rotate", "recover"})
    remediation_keys: tuple[str, ...] = ()
    remediation_namespaces: tuple[str, ...] = ()
    remediation_rotate_days: float = 7.0
    remediation_key_lifetime_days: float = 365.0
    remediation_max_per_hour: int = 10
    # The parsed KEYHEALTH_ALERTS, its secrets read from the settings it names (from_environment fills it).
    alert_config: AlertConfig = field(default_factory=AlertConfig, compare=False)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(warning=timedelta(days=self.warning_days), critical=timedelta(days=self.critical_days))

    @property
    def remediation_policy(self) -> RemediationPolicy:
        return RemediationPolicy(
            mode=Mode(self.remediation),
            actions=frozenset(Action(a) for a in self.remediation_actions),
            keys=tuple(parse_key_pattern(pattern) for pattern in self.remediation_keys),
            namespaces=self.remediation_namespaces,
            rotate_within=timedelta(days=self.remediation_rotate_days),
            new_key_lifetime=timedelta(days=self.remediation_key_lifetime_days),
            max_per_hour=self.remediation_max_per_hour,
        )

    @property
    def alert_policy(self) -> AlertPolicy:
        return AlertPolicy(
            renotify=timedelta(hours=self.alert_renotify_hours) if self.alert_renotify_hours else None,
            first_retry=timedelta(seconds=self.alert_retry_seconds),
            give_up_after=timedelta(hours=self.alert_give_up_hours),
            portal=self.portal_url,
            watchdog_sinks=self.watchdog_sinks,
            watchdog_every=timedelta(minutes=self.watchdog_minutes),
        )

    def __repr__(self) -> str:  # keeps secrets out of logs and tracebacks
        shown = ", ".join(
            f"{f.name}={'***' if SETTINGS[f.name].secret and getattr(self, f.name) else getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name in SETTINGS
        )
        return f"Settings({shown})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build Settings from `environ` (default: the process environment).

        Raises SettingError naming the setting whose value is unusable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in SETTINGS:
                continue
            spec = SETTINGS[item.name]
            raw = env.get(spec.name, "").strip() or spec.default
            if not encodable(raw):
                # Bytes that are not UTF-8 reach os.environ as lone surrogates, which fail much later (a webhook
                # secret on every request). Refused here (the message's repr escapes them); a secret is not shown.
                raise SettingError(spec.name, "(not shown)" if spec.secret else raw, "is not valid UTF-8 text")
            values[item.name] = spec.parse(spec.name, raw)
        try:
            values["alert_config"] = parse_alert_config(values["alerts"] or "", env)
        except AlertConfigError as error:
            raise SettingError(SETTINGS["alerts"].name, "(not shown)", f"{error.path}: {error.problem}") from None
        settings = cls(**values)
        if settings.state_store == "tables" and not (settings.tables_endpoint or settings.tables_connection_string):
            raise SettingError(
                SETTINGS["state_store"].name,
                settings.state_store,
                f"needs {SETTINGS['tables_endpoint'].name} or {SETTINGS['tables_connection_string'].name}",
            )
        unknown = [sink for sink in settings.watchdog_sinks if settings.alert_config.sink(sink) is None]
        if unknown:
            raise SettingError(
                SETTINGS["watchdog_sinks"].name,
                ",".join(settings.watchdog_sinks),
                f"names sinks KEYHEALTH_ALERTS does not define: {', '.join(unknown)}",
            )
        if bool(settings.auth_tenant_id) != bool(settings.auth_audience):
            given, missing = (
                ("auth_tenant_id", "auth_audience") if settings.auth_tenant_id else ("auth_audience", "auth_tenant_id")
            )
            raise SettingError(SETTINGS[given].name, "(set)", f"bearer tokens also need {SETTINGS[missing].name}")
        if settings.critical_days > settings.warning_days:
            raise SettingError(
                SETTINGS["critical_days"].name,
                f"{settings.critical_days:g}",
                f"must not exceed {SETTINGS['warning_days'].name} ({settings.warning_days:g})",
            )
        return settings
