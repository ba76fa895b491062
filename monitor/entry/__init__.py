"""Entry points and their wiring: the CLI (`keyhealth check|simulate|serve|demo`), `serve`, the demo, the
Azure Functions glue, settings (`config`, `alert_config`) and the composition root (`bootstrap`).

Kept thin: each parses what it is given, builds the app from adapters (`bootstrap`), and calls a use case.
May import every other layer; nothing imports it (but `function_app.py` and `monitor/__main__.py`).
"""
