"""Service Bus's own key accesses, from Key Vault's audit logs in Log Analytics (azure-monitor-query).

Each vault's diagnostic settings say which workspace gets its `AuditEvent` logs (ARM, Microsoft.Insights); the
workspace's customer id is what the Logs query API wants (ARM, Microsoft.OperationalInsights). Per poll, one
query per workspace (per PRINCIPALS_PER_QUERY principals) asks for the key calls (KeyGet, KeyWrap, KeyUnwrap)
of the namespaces' identities over the last LOOKBACK, from both table shapes a setting may write: the
resource-specific `AZKVAuditLogs` and the legacy `AzureDiagnostics`. The query API takes no parameters, so
every value put into the query text is first checked against its grammar (a GUID, an instant), never escaped.

What could not be observed is said, never guessed: a vault without a diagnostic setting to a workspace, a
setting or workspace the monitor may not read, a failed, throttled or truncated query, an identity two
namespaces share on the same key: each makes the namespaces it touches `unobserved`, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.core.rest import HttpRequest

from monitor.adapters.azure_clients import (
    DEFAULT_LOGS_ENDPOINT,
    LOGS_SERVER_WAIT_SECONDS,
    AzureClients,
    describe_failure,
    json_body,
)
from monitor.app.ports import ObservationReading
from monitor.domain.model import (
    KeyAccess,
    KeyId,
    Namespace,
    Observation,
    Snapshot,
    Vault,
    key_url,
    name_id,
    subscription_of,
    vault_id,
)
from monitor.domain.names import is_guid, is_key_name, vault_host_problem
from monitor.domain.observed import compacted

log = logging.getLogger(__name__)

AUDIT_CATEGORY = "AuditEvent"
# Category groups that include AuditEvent: a setting may name the group rather than the category.
AUDIT_GROUPS = frozenset({"audit", "alllogs"})
DIAGNOSTIC_SETTINGS_API = "2021-05-01-preview"
WORKSPACE_API = "2022-10-01"
OPERATIONS = ("KeyGet", "KeyWrap", "KeyUnwrap")
# Three polls and a margin: the phase is known from two, and a key dropped after a failure shows as a later
# poll without it; older polls add rows, not facts.
LOOKBACK = timedelta(minutes=16)
# Principals named in one query: 1,000 GUIDs are ~40 KB of query text, well inside what the API accepts.
PRINCIPALS_PER_QUERY = 1000
# Rows one query may return; the service stops at 500,000 (and ~64 MB). A query that returns this many was cut
# short and is not used.
MAX_ROWS = 200_000
# The Logs query API allows 5 concurrent queries per user.
QUERY_CONCURRENCY = 5
# Diagnostic settings change rarely; reading them for every vault at every poll would cost an ARM read a vault.
SETTINGS_REFRESH = timedelta(minutes=30)

# A vault's or Managed HSM's host, as Azure names them: 3-24 characters, under a cloud's DNS suffix.
_VAULT_HOST = re.compile(
    r"^[a-z0-9][a-z0-9-]{1,22}[a-z0-9]\.(?:vault|managedhsm)\."
    r"(?:azure\.net|azure\.cn|usgovcloudapi\.net|microsoftazure\.de)$"
)
# A version as a row may carry one: shown, never judged, so looser than Key Vault's 32 hex digits.
_ROW_VERSION = re.compile(r"[0-9A-Za-z]{1,64}")
# Resource ids from ARM go into request paths: nothing but their own segments may be in them.
_WORKSPACE_ID = re.compile(
    r"^/subscriptions/[0-9a-f-]{36}/resourcegroups/[-\w.()]{1,90}/providers/microsoft\.operationalinsights"
    r"/workspaces/[a-z0-9][a-z0-9-]{2,61}[a-z0-9]$",
    re.IGNORECASE,
)
_VAULT_ID = re.compile(
    r"^/subscriptions/[0-9a-f-]{36}/resourcegroups/[-\w.()]{1,90}/providers/microsoft\.keyvault"
    r"/(?:vaults|managedhsms)/[a-z0-9-]{3,24}$",
    re.IGNORECASE,
)


# Each call's instant as Unix milliseconds: a number, which the SDK passes through, where a datetime column is
# parsed row by row (most of an observation's CPU at 100,000 rows).
_UNIX_MS = 'UnixMs = datetime_diff("millisecond", TimeGenerated, datetime(1970-01-01))'
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_query(principals: Sequence[str], since: datetime, until: datetime, *, max_rows: int = MAX_ROWS) -> str:
    """The one query a workspace gets: every key call of `principals` in [since, until), from both table shapes.

    Raises ValueError for a principal that is not a GUID: the query text takes nothing unchecked."""
    bad = [p for p in principals if not is_guid(p)]
    if bad:
        raise ValueError(f"not a principal id (GUID): {bad[0]!r}")
    if not principals:
        raise ValueError("no principals to query for")
    listed = ", ".join(f'"{p}"' for p in sorted({p.lower() for p in principals}))
    operations = ", ".join(f'"{op}"' for op in OPERATIONS)
    oid_claim = "http://schemas.microsoft.com/identity/claims/objectidentifier"
    return "\n".join(
        [
            f"let since = datetime({_iso(since)});",
            f"let until = datetime({_iso(until)});",
            f"let principals = dynamic([{listed}]);",
            "union isfuzzy=true",
            "    (AZKVAuditLogs",
            "    | where TimeGenerated >= since and TimeGenerated < until",
            f"    | where OperationName in ({operations})",
            "    | extend Principal = tolower(tostring(coalesce(tostring(Identity.claim.oid),"
            f' tostring(Identity.claim["{oid_claim}"]))))',
            "    | where Principal in (principals)",
            f"    | project {_UNIX_MS}, Principal, OperationName, Status = toint(HttpStatusCode),"
            " KeyId = tostring(Id), RequestUri = tostring(RequestUri)),",
            "    (AzureDiagnostics",
            "    | where TimeGenerated >= since and TimeGenerated < until",
            f'    | where Category == "{AUDIT_CATEGORY}" and OperationName in ({operations})',
            '    | extend Principal = tolower(coalesce(tostring(column_ifexists("identity_claim_oid_g", "")),'
            ' tostring(column_ifexists("identity_claim_http_schemas_microsoft_com_identity_claims_objectidentifier_g",'
            ' ""))))',
            "    | where Principal in (principals)",
            f'    | project {_UNIX_MS}, Principal, OperationName, Status = toint(column_ifexists("httpStatusCode_d",'
            ' real(null))), KeyId = tostring(column_ifexists("id_s", "")),'
            ' RequestUri = tostring(column_ifexists("requestUri_s", "")))',
            f"| take {int(max_rows)}",
        ]
    )


@dataclass(frozen=True, slots=True)
class AccessRow:
    """One key call as the query returned it, checked."""

    at: datetime
    principal: str
    operation: str
    status: int
    key: KeyId
    url: str  # the key's URL without a version
    version: str | None


def parse_key_url(*candidates: object) -> tuple[KeyId, str, str | None] | None:
    """(KeyId, key URL without version, version) from a key id or request URI, or None when neither is a key
    URL of a vault or Managed HSM host."""
    for candidate in candidates:
        if not isinstance(candidate, str) or not candidate:
            continue
        found = _parse_key_url(candidate)
        if found is not None:
            return found
    return None


@lru_cache(maxsize=65536)
def _parse_key_url(candidate: str) -> tuple[KeyId, str, str | None] | None:
    """One candidate of parse_key_url; the same few thousand URLs come back in every poll's rows."""
    parts = urlsplit(candidate)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or vault_host_problem(host) is not None:
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or segments[0].lower() != "keys" or not is_key_name(segments[1]):
        return None
    version = segments[2] if len(segments) > 2 and _ROW_VERSION.fullmatch(segments[2]) else None
    uri = f"https://{host}"
    return (vault_id(uri), name_id(segments[1])), key_url(uri, segments[1]), version


def parse_row(row: Mapping[str, Any], since: datetime, until: datetime) -> AccessRow | None:
    """The row checked against the columns the query projects; None for one that does not hold (logged)."""
    at = row.get("TimeGenerated")
    millis = row.get("UnixMs")
    if isinstance(millis, int) and not isinstance(millis, bool) and 0 <= millis < 10**14:
        at = _EPOCH + timedelta(milliseconds=millis)
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            at = None
    principal, operation, status = row.get("Principal"), row.get("OperationName"), row.get("Status")
    if isinstance(status, float) and status.is_integer():
        status = int(status)
    key = parse_key_url(row.get("KeyId"), row.get("RequestUri"))
    if (
        not isinstance(at, datetime)
        or at.tzinfo is None
        or not since - timedelta(minutes=1) <= at <= until + timedelta(minutes=1)
        or not is_guid(principal)
        or operation not in OPERATIONS
        or not isinstance(status, int)
        or isinstance(status, bool)
        or not 100 <= status <= 599
        or key is None
    ):
        return None
    assert isinstance(principal, str)  # noqa: S101 - narrows the type; is_guid checked it
    key_id, url, version = key
    return AccessRow(at.astimezone(UTC), principal.lower(), str(operation), status, key_id, url, version)


@dataclass(frozen=True, slots=True)
class _Destinations:
    """Where a vault's AuditEvent logs go: workspace resource ids, or why that is not known."""

    workspaces: tuple[str, ...] = ()
    unknown: str | None = None  # the settings could not be read
    read_at: float = 0.0


class AuditLogObserver:
    """AccessObserver over Log Analytics: the snapshot's namespaces' own key calls, from the vaults' audit logs.

    `workspaces`: customer ids (GUIDs) to query instead of reading each vault's diagnostic settings; every vault
    is then taken to send its logs there (the monitor need not read diagnostic settings)."""

    def __init__(
        self,
        clients: AzureClients,
        *,
        logs_endpoint: str = DEFAULT_LOGS_ENDPOINT,
        workspaces: Sequence[str] = (),
        lookback: timedelta = LOOKBACK,
        max_rows: int = MAX_ROWS,
        principals_per_query: int = PRINCIPALS_PER_QUERY,
    ) -> None:
        self._clients = clients
        self._logs_endpoint = logs_endpoint
        self._configured = tuple(w.lower() for w in workspaces)
        self._lookback = lookback
        self._max_rows = max_rows
        self._principals_per_query = principals_per_query
        self._settings: dict[str, _Destinations] = {}
        self._customer_ids: dict[str, str] = {}

    async def observe(self, snapshot: Snapshot, *, now: datetime) -> ObservationReading:
        """Each namespace's own key calls over the last LOOKBACK; never raises for what it could not read."""
        started = time.monotonic()
        reading = ObservationReading()
        since = now - self._lookback
        vaults = {vault.id: vault for vault in snapshot.vaults}
        where = await self._workspaces_of(vaults.values(), reading)
        # workspace customer id -> principals to ask for; namespace -> (workspace, principal) its calls are under
        wanted: dict[str, set[str]] = {}
        # (principal, key) the audit log names -> the namespaces that call that key as that principal
        pairs: dict[tuple[str, KeyId], list[str]] = {}
        asks: dict[str, set[tuple[str, str]]] = {}
        for namespace in snapshot.namespaces:
            reason, missing, workspaces = self._plan(namespace, vaults, where)
            if reason is not None:
                reading.observations[namespace.id] = Observation(
                    since=since, unobserved=reason, diagnostics_missing=missing
                )
                continue
            principals = [namespace.identity.principal_for(ref.identity) for ref in namespace.keys]
            odd = next((p for p in principals if p is not None and not is_guid(p)), None)
            if odd is not None:
                reading.observations[namespace.id] = Observation(
                    since=since, unobserved=f"its identity's principal id {odd!r} is not a GUID"
                )
                continue
            asks[namespace.id] = {(w, p) for w in workspaces for p in principals if p is not None}
            for ref, principal in zip(namespace.keys, principals, strict=True):
                if principal is None:
                    continue  # no identity, no call: the rules say why the key is unusable
                pairs.setdefault((principal, ref.key_id), []).append(namespace.id)
                for workspace in workspaces:
                    wanted.setdefault(workspace, set()).add(principal)
        reading.workspaces = len(wanted)
        rows, failures = await self._query_all(wanted, since, now, reading)
        accesses: dict[str, list[KeyAccess]] = {}
        for row in rows:
            callers = pairs.get((row.principal, row.key))
            if callers is None:
                continue  # the identity's calls on another key, or another namespace's
            for namespace_id in set(callers):
                accesses.setdefault(namespace_id, []).append(
                    KeyAccess(row.at, row.url, row.operation, row.status, row.version)
                )
        shared = _shared(pairs, snapshot.namespaces)
        for namespace in snapshot.namespaces:
            if namespace.id not in asks:
                continue
            # Only the queries that asked for its identities: one failed chunk does not blind a whole workspace.
            reason = next((failures[a] for a in sorted(asks[namespace.id]) if a in failures), None)
            if reason is None and namespace.id in shared:
                reason = shared[namespace.id]
            if reason is not None:
                reading.observations[namespace.id] = Observation(since=since, unobserved=reason)
                continue
            calls = compacted(accesses.get(namespace.id, ()))
            reading.observations[namespace.id] = Observation(accesses=calls, since=since)
        reading.seconds = time.monotonic() - started
        return reading

    def _plan(
        self, namespace: Namespace, vaults: Mapping[str, Vault], where: Mapping[str, tuple[set[str], str | None, bool]]
    ) -> tuple[str | None, bool, set[str]]:
        """(why the namespace cannot be observed, whether that is for want of diagnostics, the workspaces its
        calls are logged in)."""
        workspaces: set[str] = set()
        for ref in namespace.keys:
            vid = vault_id(ref.vault)
            found = where.get(vid)
            if found is None:
                if vid not in vaults or vaults[vid].deleted:
                    continue  # no vault, no call to log: the rules say the key is unusable
                return f"vault {ref.vault} was not read", False, set()
            destinations, reason, missing = found
            if reason is not None:
                return reason, missing, set()
            workspaces |= destinations
        if not workspaces:
            return "none of its keys' vaults can be observed", False, set()
        return None, False, workspaces

    async def _workspaces_of(
        self, vaults: Iterable[Vault], reading: ObservationReading
    ) -> dict[str, tuple[set[str], str | None, bool]]:
        """Per vault id: (workspace customer ids its AuditEvent logs reach, why not known, want of diagnostics)."""
        live = [vault for vault in vaults if not vault.deleted]
        if self._configured:
            return {vault.id: (set(self._configured), None, False) for vault in live}
        settings = await asyncio.gather(*(self._destinations(vault, reading) for vault in live))
        workspace_ids = {w for found in settings for w in found.workspaces}
        customer = dict(
            zip(workspace_ids, await asyncio.gather(*(self._customer_id(w) for w in workspace_ids)), strict=True)
        )
        result: dict[str, tuple[set[str], str | None, bool]] = {}
        for vault, found in zip(live, settings, strict=True):
            if found.unknown is not None:
                result[vault.id] = (set(), found.unknown, False)
                continue
            if not found.workspaces:
                reason = f"no diagnostic setting sends {vault.uri}'s {AUDIT_CATEGORY} logs to a Log Analytics workspace"
                result[vault.id] = (set(), reason, True)
                continue
            ids = {customer[w] for w in found.workspaces if is_guid(customer[w])}
            if not ids:
                unreadable = next(customer[w] for w in found.workspaces)
                result[vault.id] = (set(), unreadable, False)
                continue
            result[vault.id] = (ids, None, False)
        return result

    async def _destinations(self, vault: Vault, reading: ObservationReading) -> _Destinations:
        cached = self._settings.get(vault.id)
        if cached is not None and time.monotonic() - cached.read_at < SETTINGS_REFRESH.total_seconds():
            return cached
        if not vault.resource_id or not _VAULT_ID.match(vault.resource_id):
            return _Destinations(unknown=f"vault {vault.uri}: its ARM resource id is not known")
        reading.settings_reads += 1
        url = (
            f"{vault.resource_id}/providers/Microsoft.Insights/diagnosticSettings?api-version={DIAGNOSTIC_SETTINGS_API}"
        )
        try:
            client = self._clients.keyvault_mgmt(subscription_of(vault.resource_id) or "")
            response = await client.send_request(HttpRequest("GET", url), stream=True)
            await response.read()
            if response.status_code != 200:
                response.raise_for_status()
            document = json_body(response, "diagnostic settings")
        except AzureError as error:
            # Not cached: the next poll asks again, and the reason is said meanwhile.
            return _Destinations(unknown=f"diagnostic settings of {vault.uri}: {describe_failure(error)}")
        found = _Destinations(workspaces=tuple(sorted(audit_workspaces(document))), read_at=time.monotonic())
        self._settings[vault.id] = found
        return found

    async def _customer_id(self, workspace: str) -> str:
        """The workspace's customer id (GUID), or why it could not be read."""
        known = self._customer_ids.get(workspace)
        if known is not None:
            return known
        try:
            client = self._clients.keyvault_mgmt(subscription_of(workspace) or "")
            response = await client.send_request(
                HttpRequest("GET", f"{workspace}?api-version={WORKSPACE_API}"), stream=True
            )
            await response.read()
            if response.status_code != 200:
                response.raise_for_status()
            document = json_body(response, "workspace")
        except AzureError as error:
            return f"workspace {workspace}: {describe_failure(error)}"
        customer = (document.get("properties") or {}).get("customerId") if isinstance(document, dict) else None
        if not is_guid(customer):
            return f"workspace {workspace}: its customerId is not a GUID"
        self._customer_ids[workspace] = str(customer).lower()
        return str(customer).lower()

    async def _query_all(
        self, wanted: Mapping[str, set[str]], since: datetime, until: datetime, reading: ObservationReading
    ) -> tuple[list[AccessRow], dict[tuple[str, str], str]]:
        """Every workspace's rows, and per (workspace, principal) whose query failed, why."""
        semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)
        jobs: list[tuple[str, list[str]]] = []
        for workspace, principals in sorted(wanted.items()):
            ordered = sorted(principals)
            for start in range(0, len(ordered), self._principals_per_query):
                jobs.append((workspace, ordered[start : start + self._principals_per_query]))

        async def run(workspace: str, principals: list[str]) -> list[AccessRow] | str:
            async with semaphore:
                return await self._query(workspace, principals, since, until, reading)

        results = await asyncio.gather(*(run(w, p) for w, p in jobs))
        rows: list[AccessRow] = []
        failures: dict[tuple[str, str], str] = {}
        for (workspace, asked), result in zip(jobs, results, strict=True):
            if isinstance(result, str):
                failures.update(((workspace, p), result) for p in asked)
            else:
                rows.extend(result)
        return rows, failures

    async def _query(
        self, workspace: str, principals: list[str], since: datetime, until: datetime, reading: ObservationReading
    ) -> list[AccessRow] | str:
        """One query's rows, or why there are none to use. Sent through LogsQueryClient's own pipeline (its
        token, retries and the Prefer header), its JSON read as the lists it holds: the SDK's model objects for
        each row were 40% of an observation's CPU."""
        query = build_query(principals, since, until, max_rows=self._max_rows)
        reading.queries += 1
        body = {"query": query, "timespan": f"{_iso(since)}/{_iso(until)}"}
        request = HttpRequest(
            "POST",
            f"/workspaces/{workspace}/query",
            json=body,
            headers={"Prefer": f"wait={LOGS_SERVER_WAIT_SECONDS}", "Accept": "application/json"},
        )
        failed = f"the audit log query of workspace {workspace} failed"
        try:
            response = await self._clients.logs_query(self._logs_endpoint).send_request(request, stream=True)
            await response.read()
            if response.status_code != 200:
                reading.failed_queries += 1
                try:
                    answer = json.loads(response.content)
                except ValueError:
                    answer = None  # a gateway's page: the status says enough
                detail = _logs_error_text(answer.get("error") if isinstance(answer, dict) else None)
                return f"{failed}: HTTP {response.status_code}{detail}"
            document = json_body(response, "Logs query answer")
        except (TimeoutError, AzureError, OSError) as error:
            reading.failed_queries += 1
            return f"{failed}: {describe_failure(error)}"
        problem = document.get("error") if isinstance(document, dict) else None
        if problem is not None:
            reading.failed_queries += 1
            return f"the audit log query of workspace {workspace} returned part of its rows{_logs_error_text(problem)}"
        tables = document.get("tables") if isinstance(document, dict) else None
        table = tables[0] if isinstance(tables, list) and tables and isinstance(tables[0], dict) else None
        if table is None:
            reading.failed_queries += 1
            return f"the audit log query of workspace {workspace} answered without a table"
        columns = [str(c.get("name")) if isinstance(c, dict) else "" for c in table.get("columns") or []]
        found_rows = table.get("rows")
        raw_rows: list[Any] = found_rows if isinstance(found_rows, list) else []
        reading.rows += len(raw_rows)
        if len(raw_rows) >= self._max_rows:
            reading.failed_queries += 1
            return f"the audit log query of workspace {workspace} reached {self._max_rows} rows and was cut short"
        rows = []
        rejected = 0
        for raw in raw_rows:
            row = parse_row(dict(zip(columns, raw, strict=False)), since, until) if isinstance(raw, list) else None
            if row is None:
                rejected += 1
            else:
                rows.append(row)
        if rejected:
            reading.rejected_rows += rejected
            log.warning("workspace %s: %d audit rows did not hold and were ignored", workspace, rejected)
        return rows


def _logs_error_text(error: object) -> str:
    """' <code>: <message>' of a Logs API error body, clipped; '' when there is none."""
    if not isinstance(error, dict):
        return ""
    code = str(error.get("code") or "")[:80]
    message = " ".join(str(error.get("message") or "").split())[:200]
    return f" {code}: {message}" if code or message else ""


def audit_workspaces(document: object) -> set[str]:
    """The workspace resource ids the diagnostic settings of a vault send AuditEvent logs to."""
    found: set[str] = set()
    settings = document.get("value") if isinstance(document, dict) else None
    for setting in settings if isinstance(settings, list) else []:
        properties = setting.get("properties") if isinstance(setting, dict) else None
        if not isinstance(properties, dict):
            continue
        workspace = properties.get("workspaceId")
        if not isinstance(workspace, str) or not _WORKSPACE_ID.match(workspace):
            continue
        logs = properties.get("logs")
        for entry in logs if isinstance(logs, list) else []:
            if not isinstance(entry, dict) or entry.get("enabled") is not True:
                continue
            category = str(entry.get("category") or "").lower()
            group = str(entry.get("categoryGroup") or "").lower()
            if category == AUDIT_CATEGORY.lower() or group in AUDIT_GROUPS:
                found.add(workspace.lower())
    return found


def _shared(pairs: Mapping[tuple[str, KeyId], list[str]], namespaces: Sequence[Namespace]) -> dict[str, str]:
    """Namespaces whose identity another namespace uses on the same key: the log cannot tell their calls apart."""
    names = {n.id: n.name for n in namespaces}
    shared: dict[str, str] = {}
    for (principal, key), callers in pairs.items():
        users = sorted(set(callers))
        if len(users) < 2:
            continue
        for namespace_id in users:
            others = ", ".join(names[o] for o in users if o != namespace_id)
            shared.setdefault(
                namespace_id,
                f"identity {principal} calls key {key[1]} for {others} too: the audit log cannot tell their calls "
                "apart",
            )
    return shared
