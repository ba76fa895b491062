"""Table Storage's wire format where the SDK's own handling costs more than the work: entity-group
transactions (`$batch`) and queries of string properties, built and read here, sent through the same
client's pipeline (auth, retries, tracing).

The SDK's submit_transaction builds and parses the multipart body with the email package: about a millisecond
of CPU an entity, most of a 10,000-namespace first poll. `submit` writes the same request the SDK writes (the
documented format: a changeset of one HTTP request per entity) and reads each part's status line. The SDK's
query turns each entity into its model and back (about 0.05 ms an entity, half a second a 10,000-namespace
poll); `query_strings` reads the JSON as it comes. Used where the SDK's per-entity results are not needed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from azure.core.exceptions import DecodeError
from azure.core.rest import HttpRequest
from azure.data.tables._serialize import _add_entity_properties  # the SDK's own typing of entity properties
from azure.data.tables.aio import TableClient

from monitor.adapters.azure_clients import json_body

# (what, entity, the ETag an "update" replaces: None for "create" and "upsert")
Operation = tuple[Literal["create", "upsert", "update"], dict[str, Any], str | None]

_API_VERSION = "2019-02-02"  # what the SDK speaks
_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_FAILED_INDEX = re.compile(r'"value"\s*:\s*"(\d+):')


class TransactionRefusedError(Exception):
    """Table Storage refused the transaction (nothing of it was applied): `status` of the operation at `index`
    (None when the answer does not say), e.g. 409 for a create of an existing entity, 412 for a stale ETag."""

    def __init__(self, status: int, index: int | None, detail: str) -> None:
        super().__init__(f"transaction refused ({status}) at operation {index}: {detail}")
        self.status = status
        self.index = index


def _key(value: str) -> str:
    return quote(value.replace("'", "''"), safe="")


def entity_json(entity: Mapping[str, Any]) -> str:
    """The entity as Table Storage's JSON: strings as they are (a JSON string is an Edm.String unless typed
    otherwise), anything else as the SDK types it. The SDK annotates every string too: twice the text, and
    most of an index entry's CPU."""
    properties: dict[str, Any] = {}
    for name, value in entity.items():
        if type(value) is str:
            properties[name] = value
        else:
            properties.update(_add_entity_properties({name: value}))
    return json.dumps(properties)


def _part(table_url: str, operation: Operation, content_id: int) -> str:
    kind, entity, etag = operation
    body = entity_json(entity)
    if kind == "create":
        line = f"POST {table_url} HTTP/1.1"
        headers = "Accept: application/json;odata=minimalmetadata\r\nPrefer: return-no-content\r\n"
    else:
        address = f"(PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}')"
        line = f"PUT {table_url}{address} HTTP/1.1"
        headers = "Accept: application/json\r\n" + (f"If-Match: {etag}\r\n" if kind == "update" else "")
    return (
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        f"Content-ID: {content_id}\r\n"
        "\r\n"
        f"{line}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body.encode())}\r\n"
        f"x-ms-version: {_API_VERSION}\r\n"
        "DataServiceVersion: 3.0\r\n"
        f"{headers}"
        "\r\n"
        f"{body}\r\n"
    )


def batch_body(table_url: str, operations: Sequence[Operation]) -> tuple[str, bytes]:
    """The `$batch` request's boundary and body for `operations` (one partition, at most 100)."""
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = "".join(f"--{changeset}\r\n{_part(table_url, op, i)}" for i, op in enumerate(operations))
    text = (
        f"--{batch}\r\n"
        f"Content-Type: multipart/mixed; boundary={changeset}\r\n"
        "\r\n"
        f"{parts}"
        f"--{changeset}--\r\n"
        "\r\n"
        f"--{batch}--\r\n"
    )
    return batch, text.encode()


def part_statuses(body: bytes) -> list[int]:
    """The status of each operation's answer in a `$batch` response body, in order."""
    return [int(code) for code in _STATUS_LINE.findall(body)]


async def submit(client: TableClient, operations: Sequence[Operation]) -> None:
    """Apply `operations` as one entity-group transaction, all or nothing.

    Raises TransactionRefusedError when Table Storage refused it, HttpResponseError when it refused the request
    itself (auth, size, throttling, outage), DecodeError for an answer that is not a transaction's, and the
    pipeline's AzureErrors.
    """
    table_url = f"{client.scheme}://{client._primary_hostname}/{client.table_name}"
    boundary, body = batch_body(table_url, operations)
    request = HttpRequest(
        "POST",
        f"{client.scheme}://{client._primary_hostname}/$batch",
        headers={
            "x-ms-version": _API_VERSION,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Accept": "application/json",
        },
        content=body,
    )
    # The client's own pipeline; streamed, as the SDK's own transactions are: its content policy cannot read
    # a multipart answer.
    response = await client._client.send_request(request, stream=True)
    await response.read()
    if response.status_code == 413:  # the whole request too large: refused like an operation, as the SDK does
        raise TransactionRefusedError(413, None, "the transaction request was too large")
    if response.status_code != 202:
        response.raise_for_status()
        raise DecodeError(f"a transaction answered {response.status_code}, not 202", response=response)
    content = response.content
    statuses = part_statuses(content)
    failed = next((status for status in statuses if not 200 <= status < 300), None)
    if failed is not None:
        text = content.decode("utf-8", errors="replace")
        index = _FAILED_INDEX.search(text)
        raise TransactionRefusedError(failed, int(index[1]) if index else None, text[-300:].strip())
    if len(statuses) != len(operations):
        raise DecodeError(f"a transaction of {len(operations)} answered {len(statuses)} parts", response=response)


def literal(value: str) -> str:
    """A string as an OData filter literal."""
    return "'" + value.replace("'", "''") + "'"


async def query_strings(
    client: TableClient, query_filter: str | None, select: Sequence[str]
) -> AsyncIterator[list[tuple[dict[str, str], str]]]:
    """The entities `query_filter` (None: all) matches, page by page: each its `select`ed string properties and
    its ETag. A property that is not a string is left out, as one the entity does not have.

    Raises HttpResponseError for a refused query, DecodeError for an answer that is not a query's, and the
    pipeline's AzureErrors.
    """
    params: dict[str, str] = {"$select": ",".join(select)}
    if query_filter is not None:
        params["$filter"] = query_filter
    url = f"{client.scheme}://{client._primary_hostname}/{client.table_name}()"
    while True:
        request = HttpRequest(
            "GET",
            url,
            params=params,
            headers={
                "x-ms-version": _API_VERSION,
                "DataServiceVersion": "3.0",
                "Accept": "application/json;odata=minimalmetadata",
            },
        )
        response = await client._client.send_request(request, stream=True)
        await response.read()
        response.raise_for_status()
        body = json_body(response, "query answer")
        values = body.get("value") if isinstance(body, Mapping) else None
        if not isinstance(values, list):
            raise DecodeError("unreadable query answer: no value list", response=response)
        yield [
            ({name: text for name in select if isinstance(text := item.get(name), str)}, str(item.get("odata.etag")))
            for item in values
            if isinstance(item, Mapping)
        ]
        next_partition = response.headers.get("x-ms-continuation-NextPartitionKey")
        if not next_partition:
            return
        params = {**params, "NextPartitionKey": next_partition}
        next_row = response.headers.get("x-ms-continuation-NextRowKey")
        if next_row:
            params["NextRowKey"] = next_row
        else:
            params.pop("NextRowKey", None)
