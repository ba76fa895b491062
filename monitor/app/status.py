"""Status documents: the stored judgement of one namespace or the whole fleet, as `/status` answers it."""

from __future__ import annotations

from typing import Any

from monitor.app.state import NamespaceState, StateStore


async def status_document(store: StateStore, namespace: str | None) -> tuple[int, dict[str, Any]]:
    """The fleet's last known state, or one namespace's (by name or ARM id), as (HTTP status, JSON body).

    The one implementation behind the status routes of both hosts (Functions and `keyhealth serve`).
    """
    states = await store.list_namespace_states()
    mark = await store.last_poll_completed()

    def body(state: NamespaceState) -> dict[str, Any]:
        # A poll writes only judgements that changed; a later complete poll judged every namespace the same.
        evaluated_at = max(state.evaluated_at, mark.at) if mark is not None else state.evaluated_at
        return {
            **dict(state.document),
            "evaluated_at": evaluated_at.isoformat(),
            "changed_at": state.evaluated_at.isoformat(),
        }

    if namespace is None:
        return 200, {"namespaces": [body(state) for state in states]}
    wanted = namespace.lower()
    found = next((s for s in states if s.key == wanted or (s.name or "").lower() == wanted), None)
    if found is None:
        return 404, {"error": f"no namespace {namespace!r} is known"}
    return 200, body(found)
