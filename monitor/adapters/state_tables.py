"""StateStore in Azure Table Storage (azure-data-tables, async): shared by every instance of the Functions app.

Tables (`prefix` + name, created when missing), as PartitionKey / RowKey: properties:

- namespaces: subscription id from the ARM id ("-" if none) / sha256(lower-cased ARM id): NamespaceId, Name,
  StatusNow, EvaluatedAt, KeyIds and IndexedKeyIds (JSON lists), Summary (JSON: evaluated at, digest,
  verdict, keys, whether the index is settled: what a poll compares with, read without the document),
  Doc00… (zlib-compressed JSON document). A poll writes changed states 100 to an entity-group
  transaction per partition, each conditioned on the ETag its summary was read with.
- keyusers (the key index): sha256(vault_id) / sha256(key name_id): VaultId, KeyName, Generation, Rows,
  N00… (zlib JSON: the ids of the namespaces that list the key); a key listed by tens of thousands of
  namespaces continues on rows sha256(key name_id) "-01"…, of the same Generation, written in one transaction
  with the head (rows past the head's Rows are left from a larger document and never read). A key's RowKey
  range answers namespaces_for_key; its vault's partition, namespaces_for_vault. (Earlier versions kept an
  entity an entry in `keyindex`: no longer read, and deletable; their states are indexed anew by their next
  write, see tables/namespaces.py.)
- snapshot: "snapshot" / "head": Generation, TakenAt, Chunks, Sha256, Bytes; and
  "snapshot" / generation "-" chunk number: TakenAt, D00…D11 (pieces of the zlib-compressed JSON)
- events: "event" / sha256(event id): EventId, ProcessedAt
- incidents: sha256(lower-cased ARM id) / sha256(condition): NamespaceId, Condition, Open, Body00… (zlib JSON);
  and, in the same partition so one transaction writes both, the alert outbox:
  sha256(lower-cased ARM id) / "outbox-" + entry id: NamespaceId, Condition, Sink, CreatedAt, Attempts,
  NextAttemptAt, LastError, ClaimedBy, ClaimedUntil, Doc00… (zlib JSON). Draining reads the RowKey range of
  every partition: the table holds only incidents and the few entries not yet delivered.
- leases: "lease" / sha256(lease name): Name, Holder, ExpiresAt, Token (the fencing token; a released lease
  keeps its entity, Holder "", so the next token is still larger)
- marks: "poll" / "last-complete": Holder, At (the last complete poll: one small entity, read on its own)
- keyrecords: sha256(vault_id) / "0000", "0001"…: VaultId, WrittenAt, Generation, Chunks, D00… (pieces of the
  zlib JSON of what polls learnt of the vault's keys); row 0000 is written last, and a reader that finds
  rows of another generation skips the vault (its keys are then read in full: the records are a cache)
- budgets: sha256(scope) / window start (UTC, "%Y%m%dT%H%M%S.%fZ", so text order is time order): Scope,
  WindowStart, Granted

RowKeys may not hold '/', '\\', '#' or '?', which ARM ids, key URLs and conditions do: keys are
SHA-256 digests and the original values ride along as properties. Binary properties stay under the
64 KiB property limit and entities under 1 MiB, so any document fits, however large, in pieces.

Concurrency: every read-modify-write is conditional on the ETag it read (create-only for new
records), and retried after a lost race with a random back-off. The key index cannot share a
transaction with the namespaces it indexes (other partitions), so it is kept in an order that never
loses the entry of a key a stored state lists (`_settle_index` in tables/namespaces.py); an entry it may
briefly hold too many is never answered, because lookups confirm each candidate against its state. Its
changes (add or remove a namespace from a key's document) are merged in the process and written a vault
partition at a time, each document on its ETag (tables/key_users.py): a thousand namespaces moving to
another key at once cost a few writes of two documents, not a thousand contended ones. For
the same reason a poll writes the entries of namespaces it holds no state of while it reads their keys
(`index_new_namespaces`), ahead of their states: a first poll's index writes overlap its key reads, and a
writer that dies between leaves entries without a state, never a state without its entries.
"""

from __future__ import annotations

from monitor.adapters.tables.alerts import AlertTables
from monitor.adapters.tables.coordination import CoordinationTables
from monitor.adapters.tables.namespaces import NamespaceTables
from monitor.adapters.tables.snapshot import SnapshotTables

__all__ = ["TableStateStore"]


class TableStateStore(NamespaceTables, SnapshotTables, AlertTables, CoordinationTables):
    """StateStore on Azure Table Storage (or Azurite): identity-based in Azure, connection string locally.

    `table_prefix` names this deployment's tables (letters and digits), so environments can share an
    account; `concurrency` bounds the requests one batch keeps in flight. Each kind of record lives in its
    part (monitor/adapters/tables/); the layout above is the whole store's.
    """
