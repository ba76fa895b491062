"""Azure Resource Graph's `resources` query (POST /providers/Microsoft.ResourceGraph/resources) over the sandbox's
namespaces and vaults, for the part of the query language a fleet inventory uses.

Understood: `resources`, then any of `| where <path> =~ '<text>'` (or `==`; several joined by `and`) and
`| project <field>, ...`. Anything else is answered 400 `BadRequest` naming what the sandbox does not
understand, never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monitor.sandbox.resources import resource_group_of, subscription_of
from monitor.sandbox.wire import ApiResponse, BadSkipTokenError, arm_error, decode_skip_token, encode_skip_token

DEFAULT_TOP = 100  # what Resource Graph returns when $top is not given
MAX_TOP = 1000
_CONDITION = re.compile(r"^\s*(?P<path>[A-Za-z_][\w.]*)\s*(?P<op>=~|==)\s*'(?P<value>[^']*)'\s*$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


class QueryError(ValueError):
    """A query (or request) the sandbox's Resource Graph does not understand."""


Row = dict[str, Any]
Filter = Callable[[Row], bool]


def _lookup(row: Mapping[str, Any], path: str) -> object:
    """A dotted path; property names compare case-insensitively, as Resource Graph's do."""
    value: object = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = next((v for k, v in value.items() if k.lower() == part.lower()), None)
    return value


def _condition(text: str) -> Filter:
    match = _CONDITION.match(text)
    if match is None:
        raise QueryError(f"the sandbox's Resource Graph does not understand the condition {text.strip()!r}")
    path, op, wanted = match["path"], match["op"], match["value"]

    def holds(row: Row) -> bool:
        value = _lookup(row, path)
        if not isinstance(value, str):
            return False
        return value.lower() == wanted.lower() if op == "=~" else value == wanted

    return holds


def parse_query(query: str) -> tuple[list[Filter], list[str] | None]:
    """The filters and projected fields of a query, or QueryError."""
    stages = [stage.strip() for stage in query.split("|")]
    if not stages or stages[0].lower() != "resources":
        raise QueryError("the sandbox's Resource Graph answers queries of the `resources` table only")
    filters: list[Filter] = []
    projection: list[str] | None = None
    for stage in stages[1:]:
        verb, _, rest = stage.partition(" ")
        if verb.lower() == "where":
            filters.extend(_condition(part) for part in _AND.split(rest))
        elif verb.lower() == "project":
            projection = [name.strip() for name in rest.split(",") if name.strip()]
        else:
            raise QueryError(f"the sandbox's Resource Graph does not understand `{stage}`")
    return filters, projection


def with_scope_columns(document: Mapping[str, Any]) -> Row:
    """A resource as Resource Graph shows it: its document plus subscriptionId and resourceGroup."""
    resource_id = str(document.get("id", ""))
    row = dict(document)
    row["subscriptionId"] = subscription_of(resource_id) or ""
    row["resourceGroup"] = (resource_group_of(resource_id) or "").lower()
    return row


def answer(body: object, resources: Sequence[Row]) -> ApiResponse:
    """The `resources` operation's answer to one request body."""
    if not isinstance(body, Mapping) or not isinstance(body.get("query"), str):
        return arm_error(400, "BadRequest", "The request content must be an object with a query.")
    try:
        filters, projection = parse_query(body["query"])
    except QueryError as error:
        return arm_error(400, "BadRequest", f"Please provide a valid query: {error}.")
    subscriptions = {str(s).lower() for s in body.get("subscriptions") or []}
    options = body.get("options") or {}
    top = options.get("$top") if isinstance(options, Mapping) else None
    size = min(int(top), MAX_TOP) if isinstance(top, int) and top > 0 else DEFAULT_TOP
    token = options.get("$skipToken") if isinstance(options, Mapping) else None
    try:
        offset = decode_skip_token(token) if isinstance(token, str) and token else 0
    except BadSkipTokenError:
        return arm_error(400, "BadRequest", "The $skipToken is invalid.")
    matched = [
        row
        for row in resources
        if (not subscriptions or str(row.get("subscriptionId", "")).lower() in subscriptions)
        and all(holds(row) for holds in filters)
    ]
    chunk = matched[offset : offset + size]
    if projection is not None:
        chunk = [{name: _lookup(row, name) for name in projection} for row in chunk]
    response: dict[str, Any] = {
        "totalRecords": len(matched),
        "count": len(chunk),
        "data": chunk,
        "facets": [],
        "resultTruncated": "false",
    }
    if offset + size < len(matched):
        response["$skipToken"] = encode_skip_token(offset + size)
    return ApiResponse(200, response)
