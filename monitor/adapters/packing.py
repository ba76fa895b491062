"""Documents as zlib-compressed JSON, written a batch of list items at a time: a 100,000-namespace snapshot
(well over 100 MB of JSON) is never one string in memory, only its compressed bytes."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

LEVEL = 6
ITEMS_PER_STEP = 1000  # list items encoded at once


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def packed_json(document: Mapping[str, Any]) -> bytes:
    """zlib(json.dumps(document, ensure_ascii=False, separators=(",", ":"))), byte for byte what decompresses to
    it, with each top-level list (or other sequence, a list's JSON) encoded ITEMS_PER_STEP items at a time.
    A document with no longer list (a namespace's state: most of a first poll's records) is encoded at once."""
    if type(document) is dict and all(
        (type(value) in (list, tuple) and len(value) <= ITEMS_PER_STEP)
        or not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        for value in document.values()
    ):
        return zlib.compress(_dumps(document).encode("utf-8"), LEVEL)
    compressor = zlib.compressobj(LEVEL)
    parts: list[bytes] = []

    def feed(text: str) -> None:
        parts.append(compressor.compress(text.encode("utf-8")))

    feed("{")
    for index, (name, value) in enumerate(document.items()):
        feed(("," if index else "") + _dumps(str(name)) + ":")
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            # A list, or a sequence whose items are made only when taken (scenario_document's lazy Rendered).
            feed("[")
            for start in range(0, len(value), ITEMS_PER_STEP):
                feed(("," if start else "") + _dumps(list(value[start : start + ITEMS_PER_STEP]))[1:-1])
            feed("]")
        else:
            feed(_dumps(value))
    feed("}")
    parts.append(compressor.flush())
    return b"".join(parts)
