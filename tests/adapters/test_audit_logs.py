"""The audit-log query keyhealth sends, checked against the published table schemas, and the rows it reads
back checked against their grammar: the query API takes no parameters, so nothing unchecked goes into the
text, and nothing a workspace returns is taken on trust."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.adapters.audit_logs import OPERATIONS, audit_workspaces, build_query, parse_key_url, parse_row

SCHEMAS = json.loads((Path(__file__).with_name("log_analytics_tables.json")).read_text())
SINCE = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(minutes=16)
PRINCIPAL = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
# Names the query defines itself, or KQL's own words and functions.
DEFINED = {"since", "until", "principals", "claim", "oid"}
KQL = {
    "let", "datetime", "dynamic", "union", "isfuzzy", "true", "where", "and", "in", "extend", "tolower", "tostring",
    "coalesce", "project", "toint", "take", "column_ifexists", "real", "null", "datetime_diff",
}  # fmt: skip


def _subqueries(query: str) -> dict[str, str]:
    found = dict(re.findall(r"\((AZKVAuditLogs|AzureDiagnostics)\n(.*?)\)(?:,\n|\n\|)", query, re.DOTALL))
    assert set(found) == {"AZKVAuditLogs", "AzureDiagnostics"}
    return found


def _identifiers(text: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', text)
    without_times = re.sub(r"datetime\([^)]*\)", "datetime()", without_strings)
    return set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", without_times))


def test_every_column_the_query_names_is_in_the_published_schema_of_its_table():
    query = build_query([PRINCIPAL], SINCE, UNTIL)
    for table, body in _subqueries(query).items():
        columns = set(SCHEMAS[table])
        # The legacy table's columns exist only once a vault has written them: the query asks with column_ifexists.
        optional = set(re.findall(r'column_ifexists\("([^"]+)"', body))
        assert optional <= columns, (table, optional - columns)
        aliases = set(re.findall(r"\b([A-Za-z_]\w*) = ", body))  # what `project X = ...` names itself
        named = _identifiers(body) - DEFINED - KQL - aliases
        assert named <= columns, (table, named - columns)


def test_the_columns_read_back_have_the_types_the_query_relies_on():
    resource_specific = SCHEMAS["AZKVAuditLogs"]
    assert resource_specific["TimeGenerated"] == "datetime" and resource_specific["HttpStatusCode"] == "int"
    assert resource_specific["Identity"] == "dynamic"  # hence Identity.claim.oid, turned to a string
    legacy = SCHEMAS["AzureDiagnostics"]
    assert legacy["httpStatusCode_d"] == "real"  # hence toint()


def test_the_query_names_its_principals_time_range_and_bound_and_nothing_unchecked():
    query = build_query([PRINCIPAL.upper(), PRINCIPAL], SINCE, UNTIL, max_rows=1234)
    assert f'dynamic(["{PRINCIPAL}"])' in query  # lower-cased and once
    assert "let since = datetime(2026-12-07T22:00:00.000000Z);" in query
    assert "let until = datetime(2026-12-07T22:16:00.000000Z);" in query
    assert query.rstrip().endswith("| take 1234")
    for operation in OPERATIONS:
        assert f'"{operation}"' in query
    with pytest.raises(ValueError, match="not a principal id"):
        build_query(['x"]); AZKVAuditLogs | take 1 //'], SINCE, UNTIL)
    with pytest.raises(ValueError, match="no principals"):
        build_query([], SINCE, UNTIL)


GOOD_ROW = {
    "TimeGenerated": datetime(2026, 12, 7, 22, 3, 13, tzinfo=UTC),
    "Principal": PRINCIPAL,
    "OperationName": "KeyUnwrap",
    "Status": 200,
    "KeyId": "https://kv-prod.vault.azure.net/keys/sb-cmk/0123456789abcdef0123456789abcdef",
    "RequestUri": "",
}


def test_a_row_that_holds_is_read_with_its_key_and_version():
    row = parse_row(GOOD_ROW, SINCE, UNTIL)
    assert row is not None
    assert (
        row.url == "https://kv-prod.vault.azure.net/keys/sb-cmk" and row.version == "0123456789abcdef0123456789abcdef"
    )
    # A failed call has no Id: its request URI names the key.
    failed = parse_row(
        {
            **GOOD_ROW,
            "Status": 403.0,
            "KeyId": "",
            "RequestUri": "https://kv-prod.vault.azure.net:443/keys/SB-CMK/?api-version=7.4",
        },
        SINCE,
        UNTIL,
    )
    assert failed is not None and failed.status == 403 and failed.key == GOOD_ROW_KEY_ID
    # As the query projects it: Unix milliseconds, which the SDK does not parse row by row.
    millis = {k: v for k, v in GOOD_ROW.items() if k != "TimeGenerated"} | {"UnixMs": 1796680993250}
    row = parse_row(millis, SINCE, UNTIL)
    assert row is not None and row.at == datetime(2026, 12, 7, 22, 3, 13, 250000, tzinfo=UTC)
    assert parse_row({**millis, "UnixMs": -5}, SINCE, UNTIL) is None


GOOD_ROW_KEY_ID = ("https://kv-prod.vault.azure.net", "sb-cmk")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Principal", "not-a-guid"),
        ("Principal", None),
        ("OperationName", "SecretGet"),
        ("Status", 999),
        ("Status", True),
        ("Status", "200"),
        ("TimeGenerated", "yesterday"),
        ("TimeGenerated", datetime(2026, 12, 1, tzinfo=UTC)),  # outside the range asked for
        ("KeyId", "https://evil.example.com/keys/sb-cmk"),
        ("KeyId", "http://kv-prod.vault.azure.net/keys/sb-cmk"),
        ("KeyId", "https://kv-prod.vault.azure.net/secrets/sb-cmk"),
        ("KeyId", "https://kv-prod.vault.azure.net/keys/bad_name!"),
    ],
)
def test_a_row_that_does_not_hold_is_not_read(field: str, value: object):
    assert parse_row({**GOOD_ROW, field: value}, SINCE, UNTIL) is None


def test_a_key_url_is_read_only_from_a_vault_or_managed_hsm_host():
    assert parse_key_url("https://hsm-prod.managedhsm.azure.net/keys/k1/abc") == (
        ("https://hsm-prod.managedhsm.azure.net", "k1"),
        "https://hsm-prod.managedhsm.azure.net/keys/k1",
        "abc",
    )
    assert parse_key_url("https://kv-prod.vault.azure.cn/keys/k1") is not None  # another cloud
    assert parse_key_url("https://kv-prod.vault.azure.net.evil.example/keys/k1") is None
    assert parse_key_url("https://kv-prod.vault.evil.example/keys/k1") is None
    assert parse_key_url(42, None, "") is None


def test_the_workspaces_a_vault_sends_audit_events_to_are_read_from_its_diagnostic_settings():
    workspace = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
        "Microsoft.OperationalInsights/workspaces/law-prod"
    )
    other = workspace.replace("/law-prod", "/law-all")
    document = {
        "value": [
            {"properties": {"workspaceId": workspace, "logs": [{"category": "AuditEvent", "enabled": True}]}},
            {"properties": {"workspaceId": other, "logs": [{"categoryGroup": "allLogs", "enabled": True}]}},
            # Off, to storage only, or not a workspace: none of them counts.
            {"properties": {"workspaceId": workspace + "x", "logs": [{"category": "AuditEvent", "enabled": False}]}},
            {
                "properties": {
                    "storageAccountId": "/subscriptions/s/x",
                    "logs": [{"category": "AuditEvent", "enabled": True}],
                }
            },
            {
                "properties": {
                    "workspaceId": "javascript:alert(1)",
                    "logs": [{"category": "AuditEvent", "enabled": True}],
                }
            },
            # A query or a path smuggled into an id the monitor will GET.
            {"properties": {"workspaceId": workspace + "?x=1", "logs": [{"category": "AuditEvent", "enabled": True}]}},
            {"properties": {"workspaceId": workspace + "/../x", "logs": [{"categoryGroup": "audit", "enabled": True}]}},
            "garbage",
        ]
    }
    assert audit_workspaces(document) == {workspace.lower(), other.lower()}
    assert audit_workspaces({"value": "nope"}) == set() and audit_workspaces(None) == set()
