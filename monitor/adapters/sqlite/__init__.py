"""The SQLite state store in parts: the schema and its migrations with the value encodings (codec), the
plumbing every part uses (base), and one part per kind of record; `monitor.adapters.state_sqlite.SqliteStateStore`
joins them."""
