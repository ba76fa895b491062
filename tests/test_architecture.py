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
