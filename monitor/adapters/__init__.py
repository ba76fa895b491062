"""I/O at the edge: Azure SDK clients, the state stores (SQLite, Table Storage) and the alert sinks.

Each implements a seam of `monitor.app` (`ports`, `state`; `telemetry` for its instruments) and turns SDK
types into domain values; SDK types never leave this package. May import `monitor.domain` and those seams;
only the composition root (`monitor.entry.bootstrap`, and the CLI) imports adapters.
"""
