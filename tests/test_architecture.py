"""The import directions and purity rules of the design hold in the source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MONITOR = Path(__file__).resolve().parent.parent / "monitor"
DOMAIN_FILES = sorted((MONITOR / "domain").glob("*.py"))

# What would make the domain read the clock, the environment or files.
IMPURE_CALLS = {"now", "utcnow", "today", "time", "monotonic", "getenv", "open", "read_text", "write_text"}


def _imports(path: Path) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def test_the_domain_imports_only_the_standard_library_and_itself():
    """monitor.domain depends on nothing of ours outside it, and on no third-party package."""
    offenders = [
        f"{path.name}: {module}"
        for path in DOMAIN_FILES
        for module in _imports(path)
        if not (module.startswith("monitor.domain") or module.split(".")[0] in sys.stdlib_module_names)
    ]
    assert offenders == []


def test_the_domain_reads_no_clock_environment_or_files():
    """No call in monitor.domain reads the time, the environment or a file: those are passed in."""
    offenders = []
    for path in DOMAIN_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in IMPURE_CALLS:
                    offenders.append(f"{path.name}:{node.lineno} {name}()")
            if isinstance(node, ast.Attribute) and node.attr == "environ":
                offenders.append(f"{path.name}:{node.lineno} environ")
    assert offenders == []


def test_only_the_composition_roots_import_adapters():
    """monitor.adapters is imported only by bootstrap, cli and function_app."""
    allowed = {"bootstrap.py", "cli.py", "function_app.py"}
    offenders = [
        f"{path.relative_to(MONITOR)}: {module}"
        for path in MONITOR.rglob("*.py")
        if "adapters" not in path.parts and path.name not in allowed
        for module in _imports(path)
        if module.startswith("monitor.adapters")
    ]
    assert offenders == []


# The layers, top to bottom, and what each may import of ours (besides itself and the `monitor` package's
# version). An arrow the wrong way fails here, naming the module and the import.
LAYERS: dict[str, set[str]] = {
    "entry": {"app", "formats", "adapters", "sandbox", "domain"},
    "sandbox": {"formats", "domain"},
    "adapters": {"app.ports", "app.state", "app.telemetry", "domain"},
    "app": {"formats", "domain"},
    "formats": {"domain"},
    "domain": set(),
}
# Outside the layers: the Functions app and `python -m monitor`, both entry points themselves.
ENTRY_FILES = {MONITOR.parent / "function_app.py", MONITOR / "__main__.py"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "monitor" and parts[1] in LAYERS else None


def _allowed(layer: str, module: str) -> bool:
    inner = module.removeprefix("monitor.")
    return any(inner == target or inner.startswith(f"{target}.") for target in {layer, *LAYERS[layer]})


def test_every_module_lives_in_a_layer_folder():
    loose = sorted(path.name for path in MONITOR.glob("*.py") if path.name not in {"__init__.py", "__main__.py"})
    assert loose == [], "a module beside the layers: move it into the folder of its layer"


def test_imports_run_only_down_the_layers():
    offenders = []
    for path in sorted(MONITOR.rglob("*.py")):
        layer = path.relative_to(MONITOR).parts[0]
        if layer not in LAYERS:
            continue
        for module in _imports(path):
            if module == "monitor" or not module.startswith("monitor."):
                continue
            if not _allowed(layer, module):
                offenders.append(f"{path.relative_to(MONITOR.parent)} imports {module}")
    assert offenders == []


def test_nothing_imports_an_entry_point_but_the_entry_points():
    offenders = [
        f"{path.relative_to(MONITOR.parent)} imports {module}"
        for path in sorted(MONITOR.rglob("*.py"))
        if path.relative_to(MONITOR).parts[0] != "entry" and path not in ENTRY_FILES
        for module in _imports(path)
        if _layer(module) == "entry"
    ]
    assert offenders == []


def test_the_layer_rules_catch_an_arrow_the_wrong_way():
    """The checks above would fail on these: each is an import against the layers."""
    assert not _allowed("domain", "monitor.app.state")
    assert not _allowed("app", "monitor.adapters.keyvault")
    assert not _allowed("app", "monitor.entry.config")
    assert not _allowed("adapters", "monitor.app.poll")
    assert not _allowed("formats", "monitor.app.ports")
    assert not _allowed("sandbox", "monitor.app.events")
    assert _allowed("adapters", "monitor.app.ports") and _allowed("entry", "monitor.adapters.keyvault")
