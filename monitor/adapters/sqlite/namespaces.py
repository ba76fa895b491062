"""Namespace states and the key index in SQLite: each namespace's judgement, and which namespaces list a
key or use a vault."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping

from monitor.adapters.sqlite.base import SqliteBase
from monitor.adapters.sqlite.codec import _consistent_read, _immediate, _json, _select_in, _text, _time
from monitor.app.state import (
    NamespaceState,
    StateSummary,
    namespace_key,
)
from monitor.domain.model import KeyId, name_id, vault_id


class SqliteNamespaces(SqliteBase):
    """Namespace states and the key index in SQLite: each namespace's judgement, and which namespaces list a"""

    # -- namespace states and the key index

    async def index_new_namespaces(self, namespaces: Iterable[tuple[str, frozenset[KeyId]]]) -> None:
        del namespaces  # a state's index rows are written in the state's own transaction

    async def put_namespace_states(
        self, states: Iterable[NamespaceState], *, previous: Mapping[str, StateSummary] | None = None
    ) -> list[str]:
        # One transaction reads what it needs anyway: `previous` saves nothing here.
        latest: dict[str, NamespaceState] = {}
        for state in states:
            before = latest.get(state.key)
            if before is None or state.evaluated_at >= before.evaluated_at:
                latest[state.key] = state
        rows = [
            (key, state, _text(state.evaluated_at, "evaluated_at"), _json(state.document), state.digest, state.verdict)
            for key, state in latest.items()
        ]

        def put(connection: sqlite3.Connection) -> list[str]:
            stale: list[str] = []
            with _immediate(connection):
                # Statements a batch, not a namespace: a poll writes the whole fleet's states at once.
                keys = [row[0] for row in rows]
                stored = dict(_select_in(connection, "SELECT namespace_key, evaluated_at FROM namespace_state", keys))
                fresh = []
                for row in rows:
                    key, state, evaluated_at = row[:3]
                    if key in stored and stored[key] > evaluated_at:
                        stale.append(state.id)
                    else:
                        fresh.append(row)
                connection.executemany(
                    """INSERT INTO namespace_state
                           (namespace_key, namespace_id, evaluated_at, document, digest, verdict)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (namespace_key) DO UPDATE SET
                           namespace_id = excluded.namespace_id,
                           evaluated_at = excluded.evaluated_at,
                           document = excluded.document,
                           digest = excluded.digest,
                           verdict = excluded.verdict""",
                    [
                        (key, state.id, evaluated_at, document, digest, verdict)
                        for key, state, evaluated_at, document, digest, verdict in fresh
                    ],
                )
                indexed: dict[str, set[KeyId]] = {}
                for key, vault, name in _select_in(
                    connection, "SELECT namespace_key, vault_id, key_name FROM namespace_key", [r[0] for r in fresh]
                ):
                    indexed.setdefault(key, set()).add((vault, name))
                # The key index is rewritten only where a namespace's keys changed (rarely, after the first poll).
                moved = [(row[0], row[1]) for row in fresh if indexed.get(row[0], set()) != row[1].key_ids]
                connection.executemany("DELETE FROM namespace_key WHERE namespace_key = ?", [(k,) for k, _ in moved])
                connection.executemany(
                    "INSERT INTO namespace_key (namespace_key, vault_id, key_name) VALUES (?, ?, ?)",
                    [(key, vault, name) for key, state in moved for vault, name in state.key_ids],
                )
            return sorted(stale, key=namespace_key)

        return await self._call(put)

    @staticmethod
    def _state(row: tuple[str, str, str], key_ids: Iterable[KeyId]) -> NamespaceState:
        _, evaluated_at, document = row
        return NamespaceState(
            document=json.loads(document), evaluated_at=_time(evaluated_at), key_ids=frozenset(key_ids)
        )

    async def get_namespace_state(self, namespace_id: str) -> NamespaceState | None:
        key = namespace_key(namespace_id)

        def get(connection: sqlite3.Connection) -> NamespaceState | None:
            with _consistent_read(connection):
                row = connection.execute(
                    "SELECT namespace_key, evaluated_at, document FROM namespace_state WHERE namespace_key = ?", (key,)
                ).fetchone()
                if row is None:
                    return None
                keys = connection.execute(
                    "SELECT vault_id, key_name FROM namespace_key WHERE namespace_key = ?", (key,)
                ).fetchall()
            return self._state(row, keys)

        return await self._call(get)

    async def list_namespace_states(self) -> list[NamespaceState]:
        def list_all(connection: sqlite3.Connection) -> list[NamespaceState]:
            with _consistent_read(connection):
                rows = connection.execute(
                    "SELECT namespace_key, evaluated_at, document FROM namespace_state ORDER BY namespace_key"
                ).fetchall()
                keys: dict[str, list[KeyId]] = {}
                for key, vault, name in connection.execute(
                    "SELECT namespace_key, vault_id, key_name FROM namespace_key"
                ):
                    keys.setdefault(key, []).append((vault, name))
            return [self._state(row, keys.get(row[0], ())) for row in rows]

        return await self._call(list_all)

    async def list_namespace_summaries(self) -> list[StateSummary]:
        def list_all(connection: sqlite3.Connection) -> list[StateSummary]:
            with _consistent_read(connection):
                rows = connection.execute(
                    "SELECT namespace_key, namespace_id, evaluated_at, digest, verdict FROM namespace_state"
                    " ORDER BY namespace_key"
                ).fetchall()
                keys: dict[str, set[KeyId]] = {}
                for key, vault, name in connection.execute(
                    "SELECT namespace_key, vault_id, key_name FROM namespace_key"
                ):
                    keys.setdefault(key, set()).add((vault, name))
            return [
                StateSummary(namespace_id, _time(evaluated_at), digest, verdict, frozenset(keys.get(key, ())))
                for key, namespace_id, evaluated_at, digest, verdict in rows
            ]

        return await self._call(list_all)

    async def delete_namespace_state(self, namespace_id: str) -> bool:
        key = namespace_key(namespace_id)

        def delete(connection: sqlite3.Connection) -> bool:
            with _immediate(connection):
                # The index rows go with it: ON DELETE CASCADE.
                return connection.execute("DELETE FROM namespace_state WHERE namespace_key = ?", (key,)).rowcount > 0

        return await self._call(delete)

    async def _summaries_where(self, where: str, args: tuple[str, ...]) -> list[StateSummary]:
        def select(connection: sqlite3.Connection) -> list[StateSummary]:
            with _consistent_read(connection):
                rows = connection.execute(
                    f"""SELECT namespace_key, namespace_id, evaluated_at, digest, verdict FROM namespace_state
                        WHERE namespace_key IN (SELECT namespace_key FROM namespace_key WHERE {where})
                        ORDER BY namespace_key""",  # noqa: S608 - `where` is one of this class's own clauses
                    args,
                ).fetchall()
                keys: dict[str, set[KeyId]] = {}
                for key, vault, name in _select_in(
                    connection, "SELECT namespace_key, vault_id, key_name FROM namespace_key", [r[0] for r in rows]
                ):
                    keys.setdefault(key, set()).add((vault, name))
            return [
                StateSummary(namespace_id, _time(evaluated_at), digest, verdict, frozenset(keys.get(key, ())))
                for key, namespace_id, evaluated_at, digest, verdict in rows
            ]

        return await self._call(select)

    async def summaries_for_key(self, vault_uri: str, key_name: str) -> list[StateSummary]:
        return await self._summaries_where("vault_id = ? AND key_name = ?", (vault_id(vault_uri), name_id(key_name)))

    async def summaries_for_vault(self, vault_uri: str) -> list[StateSummary]:
        return await self._summaries_where("vault_id = ?", (vault_id(vault_uri),))

    async def namespaces_for_key(self, vault_uri: str, key_name: str) -> list[str]:
        return [summary.id for summary in await self.summaries_for_key(vault_uri, key_name)]

    async def namespaces_for_vault(self, vault_uri: str) -> list[str]:
        return [summary.id for summary in await self.summaries_for_vault(vault_uri)]
