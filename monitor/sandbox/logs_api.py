"""The stand-in's Azure Monitor: each vault's diagnostic settings (ARM, Microsoft.Insights), the workspace
they send to (ARM, Microsoft.OperationalInsights), and the Logs query API over the rows the stand-in's Service
Bus polls left (`ServiceBusPolls`).

The query API answers one shape of query, the one keyhealth sends (monitor.adapters.audit_logs.build_query):
`let` bindings of `since`, `until` (datetime literals) and `principals` (a dynamic array of GUIDs), a `union`
of `AZKVAuditLogs` and `AzureDiagnostics` sub-queries filtering on TimeGenerated, OperationName (and Category),
the caller's object id and projecting the columns keyhealth reads, and a final `take`. It evaluates those
filters itself, over the table shape each vault's diagnostic setting names. Anything else is refused with the
400 a real workspace sends for a query it cannot run: a general KQL engine is out of the stand-in's scope, and a
stand-in that guessed at other queries would hide a query the real service would reject or answer otherwise.
The query text itself is checked against the published table schemas in the tests.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from monitor.domain.names import GUID
from monitor.sandbox.resources import stable_uuid
from monitor.sandbox.servicebus_polls import AuditRow, ServiceBusPolls
from monitor.sandbox.state import DEFAULT_SUBSCRIPTION, RESOURCE_AGE, SandboxState
from monitor.sandbox.wire import ApiRequest, ApiResponse, Router, arm_error, arm_time, logs_error

WORKSPACE_RESOURCE_GROUP = "rg-monitoring"
WORKSPACE_NAME = "law-keyhealth"
# Log Analytics refuses more than this many rows in one result.
MAX_RESULT_ROWS = 500_000
TableShape = Literal["AZKVAuditLogs", "AzureDiagnostics"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_LET_TIME = re.compile(r"let (since|until) = datetime\(([0-9T:.\-]+Z)\);")
_LET_PRINCIPALS = re.compile(r"let principals = dynamic\(\[((?:\"" + GUID.pattern + r"\"(?:, )?)*)\]\);")
_TAKE = re.compile(r"\|\s*take (\d+)\s*$")
_OPERATIONS = re.compile(r"OperationName in \(((?:\"[A-Za-z]+\"(?:, )?)+)\)")
_SUBQUERY = re.compile(r"\((AZKVAuditLogs|AzureDiagnostics)\n(.*?)\)(?:,\n|\n\|)", re.DOTALL)


@dataclass(slots=True)
class Workspace:
    """The one Log Analytics workspace of the stand-in, and which vaults send their AuditEvent logs to it."""

    resource_id: str
    customer_id: str
    readable: bool = True  # False: the monitor lacks Log Analytics Reader on it
    # vault host -> the table shape its diagnostic setting writes; a vault not here has no setting.
    shapes: dict[str, TableShape] = field(default_factory=dict)


class LogsApi:
    """Diagnostic settings and the workspace under ARM, and the Logs query API under /loganalytics."""

    def __init__(self, state: SandboxState, polls: ServiceBusPolls) -> None:
        self._state = state
        self.polls = polls
        self._lock = threading.Lock()
        resource_id = (
            f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/{WORKSPACE_RESOURCE_GROUP}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{WORKSPACE_NAME}"
        )
        self.workspace = Workspace(resource_id, stable_uuid("workspace", resource_id))
        for info in state.vaults:
            self.workspace.shapes[info.host] = "AZKVAuditLogs"
        query = Router(lambda request: logs_error(404, "PathNotFoundError", f"The path {request.path} is not served."))
        query.add("POST", r"/v1/workspaces/(?P<workspace>[^/]+)/query/?", self._query)
        self._router = query

    # --- what a test or the demo changes -----------------------------------------------------------------

    def set_diagnostics(self, vault: str, shape: TableShape | None) -> None:
        """Give `vault` a diagnostic setting writing `shape`, or (None) remove it."""
        host = self._state.vault(vault).host
        with self._lock:
            if shape is None:
                self.workspace.shapes.pop(host, None)
            else:
                self.workspace.shapes[host] = shape

    # --- ARM ---------------------------------------------------------------------------------------------

    def add_routes(self, router: Router) -> None:
        vault = (
            r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/(?:vaults|managedHSMs)"
            r"/(?P<name>[^/]+)"
        )
        router.add("GET", rf"{vault}/providers/Microsoft\.Insights/diagnosticSettings/?", self._diagnostic_settings)
        router.add(
            "GET",
            r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
            r"Microsoft\.OperationalInsights/workspaces/(?P<name>[^/]+)/?",
            self._get_workspace,
        )

    def _diagnostic_settings(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info = self._state.vault_by_name(match["name"])
        if info is None or not self._state.vault_exists(info, request.now):
            return arm_error(
                404, "ResourceNotFound", f"The Resource 'Microsoft.KeyVault/vaults/{match['name']}' was not found."
            )
        with self._lock:
            shape = self.workspace.shapes.get(info.host)
        settings = []
        if shape is not None:
            setting_id = f"{info.resource_id}/providers/microsoft.insights/diagnosticSettings/keyhealth-audit"
            settings.append(
                {
                    "id": setting_id,
                    "type": "Microsoft.Insights/diagnosticSettings",
                    "name": "keyhealth-audit",
                    "location": None,
                    "properties": {
                        "storageAccountId": None,
                        "serviceBusRuleId": None,
                        "workspaceId": self.workspace.resource_id,
                        "eventHubAuthorizationRuleId": None,
                        "eventHubName": None,
                        "metrics": [{"category": "AllMetrics", "enabled": False, "retentionPolicy": None}],
                        "logs": [
                            {"category": "AuditEvent", "categoryGroup": None, "enabled": True, "retentionPolicy": None},
                            {
                                "category": "AzurePolicyEvaluationDetails",
                                "categoryGroup": None,
                                "enabled": False,
                                "retentionPolicy": None,
                            },
                        ],
                        "logAnalyticsDestinationType": "Dedicated" if shape == "AZKVAuditLogs" else None,
                    },
                }
            )
        return ApiResponse(200, {"value": settings})

    def _get_workspace(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        wanted = (
            f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{match['name']}"
        )
        if wanted.lower() != self.workspace.resource_id.lower():
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.OperationalInsights/workspaces/{match['name']}' under resource group "
                f"'{match['rg']}' was not found.",
            )
        return ApiResponse(
            200,
            {
                "id": self.workspace.resource_id,
                "name": WORKSPACE_NAME,
                "type": "Microsoft.OperationalInsights/workspaces",
                "location": "westeurope",
                "properties": {
                    "customerId": self.workspace.customer_id,
                    "provisioningState": "Succeeded",
                    "sku": {"name": "PerGB2018"},
                    "retentionInDays": 30,
                    "createdDate": arm_time(request.now - RESOURCE_AGE),
                    "publicNetworkAccessForIngestion": "Enabled",
                    "publicNetworkAccessForQuery": "Enabled",
                },
            },
        )

    # --- the Logs query API -----------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResponse:
        return self._router.dispatch(request)

    def _query(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        if match["workspace"].lower() != self.workspace.customer_id:
            return logs_error(404, "WorkspaceNotFoundError", f"The workspace {match['workspace']} could not be found")
        if not self.workspace.readable:
            return logs_error(
                403,
                "InsufficientAccessError",
                "The provided credentials have insufficient access to perform the requested operation",
            )
        body = request.body if isinstance(request.body, dict) else {}
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            return logs_error(
                400, "BadArgumentError", "The request had some invalid properties", inner_code="QueryMissing"
            )
        try:
            parsed = _parse(text)
        except ValueError as error:
            return logs_error(
                400, "BadArgumentError", f"The request had some invalid properties: {error}", inner_code="SyntaxError"
            )
        window = _timespan(body.get("timespan"))
        since = max(parsed.since, window[0]) if window else parsed.since
        until = min(parsed.until, window[1]) if window else parsed.until
        with self._lock:
            shapes = dict(self.workspace.shapes)
        rows = []
        for row in self.polls.rows(since, until, now=request.now):
            shape = shapes.get(row.vault_host)
            if shape is None or shape not in parsed.tables:
                continue
            if row.operation not in parsed.operations or row.principal not in parsed.principals:
                continue
            rows.append(_project(row))
            if len(rows) >= parsed.take:
                break
        columns = [
            {"name": "UnixMs", "type": "long"},
            {"name": "Principal", "type": "string"},
            {"name": "OperationName", "type": "string"},
            {"name": "Status", "type": "int"},
            {"name": "KeyId", "type": "string"},
            {"name": "RequestUri", "type": "string"},
        ]
        return ApiResponse(200, {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": rows}]})


@dataclass(frozen=True, slots=True)
class _Query:
    since: datetime
    until: datetime
    principals: frozenset[str]
    tables: frozenset[str]
    operations: frozenset[str]
    take: int


def _parse(text: str) -> _Query:
    """The values keyhealth's query carries; ValueError naming what does not fit its shape."""
    times = dict(_LET_TIME.findall(text))
    if set(times) != {"since", "until"}:
        raise ValueError("expected 'let since = datetime(...)' and 'let until = datetime(...)'")
    principals = _LET_PRINCIPALS.search(text)
    if principals is None:
        raise ValueError("expected 'let principals = dynamic([...])' of object ids")
    take = _TAKE.search(text)
    if take is None:
        raise ValueError("expected a final '| take N'")
    subqueries = _SUBQUERY.findall(text)
    if not subqueries or "union isfuzzy=true" not in text:
        raise ValueError("expected 'union isfuzzy=true' of AZKVAuditLogs and AzureDiagnostics sub-queries")
    operations: set[str] = set()
    for table, body in subqueries:
        if "Principal in (principals)" not in body or "TimeGenerated >= since and TimeGenerated < until" not in body:
            raise ValueError(f"the {table} sub-query does not filter on the principals and the time range")
        if table == "AzureDiagnostics" and 'Category == "AuditEvent"' not in body:
            raise ValueError('the AzureDiagnostics sub-query does not filter on Category == "AuditEvent"')
        found = _OPERATIONS.search(body)
        if found is None:
            raise ValueError(f"the {table} sub-query does not filter on OperationName")
        operations |= {op.strip('"') for op in found[1].split(", ")}
    try:
        since = datetime.fromisoformat(times["since"].replace("Z", "+00:00"))
        until = datetime.fromisoformat(times["until"].replace("Z", "+00:00"))
    except ValueError as error:
        raise ValueError(f"not a datetime literal: {error}") from None
    count = int(take[1])
    if count > MAX_RESULT_ROWS:
        raise ValueError(f"take {count} is more than the {MAX_RESULT_ROWS} rows a result may hold")
    listed = frozenset(p.strip('"').lower() for p in principals[1].split(", ") if p)
    return _Query(since, until, listed, frozenset(t for t, _ in subqueries), frozenset(operations), count)


def _timespan(value: object) -> tuple[datetime, datetime] | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    start, _, end = value.partition("/")
    try:
        return (
            datetime.fromisoformat(start.replace("Z", "+00:00")),
            datetime.fromisoformat(end.replace("Z", "+00:00")),
        )
    except ValueError:
        return None  # a duration form: the query's own bounds hold


def _project(row: AuditRow) -> list[object]:
    return [
        round((row.at - _EPOCH).total_seconds() * 1000),
        row.principal,
        row.operation,
        row.status,
        row.key,
        row.request_uri,
    ]
