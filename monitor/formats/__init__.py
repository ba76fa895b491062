"""File and wire formats: scenario files (JSON/YAML), the prediction JSON and table, the HTML/PNG report,
and Key Vault's Event Grid and CloudEvents payloads.

Each turns bytes into domain values or domain values into bytes, and checks input against its grammar.
May import `monitor.domain` only: no I/O beyond the file or payload it is handed, no clock.
"""
