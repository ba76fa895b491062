"""I/O at the edge: Azure SDK clients turned into domain values; SDK types never leave this package."""
