"""Azure Resource Graph's `resources` query (POST /providers/Microsoft.ResourceGraph/resources) over the sandbox's
namespaces and vaults, for the part of the query language a fleet inventory uses.

Understood: `resources`, then any of `| where <path> =~ '<text>'` (or `==`, or `in~ ('<text>', ...)`; several
joined by `and`) and `| project <field>, ...`. Anything else is answered 400 `BadRequest` naming what the
sandbox does not understand, never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monitor.sandbox.resources import resource_group_of, subscription_of
from monitor.sandbox.wire import ApiResponse, arm_error

DEFAULT_TOP = 100  # what Resource Graph returns when $top is not given
MAX_TOP = 1000
_CONDITION = re.compile(r"^\s*(?P<path>[A-Za-z_][\w.]*)\s*(?P<op>=~|==)\s*'(?P<value>[^']*)'\s*$")
_IN = re.compile(r"^\s*(?P<path>[A-Za-z_][\w.]*)\s+in~\s*\((?P<values>\s*'[^']*'(?:\s*,\s*'[^']*')*)\s*\)\s*$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
KEPT_RESULTS = 16  # result sets kept for their continuation pages; an older one's $skipToken is refused


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
        # The exact name first: a scan of every property per row made each page of a large fleet slow.
        value = value[part] if part in value else next((v for k, v in value.items() if k.lower() == part.lower()), None)
    return value


def _condition(text: str) -> Filter:
    listed = _IN.match(text)
    if listed is not None:
        in_path = listed["path"]
        wanted_any = {value.lower() for value in re.findall(r"'([^']*)'", listed["values"])}

        def holds_one(row: Row) -> bool:
            value = _lookup(row, in_path)
            return isinstance(value, str) and value.lower() in wanted_any

        return holds_one
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


class ResultSets:
    """Query results kept for their continuation pages, as Resource Graph keeps them: a page after the first is
    cut from the rows the first page came from (consistent paging), not from the query evaluated again."""

    def __init__(self, keep: int = KEPT_RESULTS) -> None:
        self._keep = keep
        self._sets: OrderedDict[int, tuple[str, list[Row]]] = OrderedDict()
        self._lock = threading.Lock()
        self._next_id = 0

    def add(self, query: str, rows: list[Row]) -> int:
        with self._lock:
            self._next_id += 1
            self._sets[self._next_id] = (query, rows)
            while len(self._sets) > self._keep:
                self._sets.popitem(last=False)
            return self._next_id

    def get(self, result_id: int, query: str) -> list[Row] | None:
        """The rows of that result set, if it is still kept and was made by the same query."""
        with self._lock:
            kept = self._sets.get(result_id)
        return kept[1] if kept is not None and kept[0] == query else None


def _encode_token(result_id: int, offset: int) -> str:
    raw = json.dumps({"$id": result_id, "NextMarker": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[int, int] | None:
    try:
        decoded = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))
        result_id, offset = decoded["$id"], decoded["NextMarker"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    if not isinstance(result_id, int) or not isinstance(offset, int) or offset < 0:
        return None
    return result_id, offset


def answer(body: object, resources: Callable[[], Sequence[Row]], results: ResultSets) -> ApiResponse:
    """The `resources` operation's answer to one request body; `resources` is called for a first page only."""
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
    query = json.dumps([body["query"], sorted(subscriptions)])
    if isinstance(token, str) and token:
        position = _decode_token(token)
        matched = results.get(position[0], query) if position is not None else None
        if position is None or matched is None:
            return arm_error(400, "BadRequest", "The $skipToken is invalid.")
        result_id, offset = position
    else:
        matched = [
            row
            for row in resources()
            if (not subscriptions or str(row.get("subscriptionId", "")).lower() in subscriptions)
            and all(holds(row) for holds in filters)
        ]
        result_id, offset = results.add(query, matched), 0
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
        response["$skipToken"] = _encode_token(result_id, offset + size)
    return ApiResponse(200, response)
