"""Invariant 5: the charging core imports nothing but the standard library and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import edgepoint.charging

CORE = Path(edgepoint.charging.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_has_modules_to_check() -> None:
    assert len(list(CORE.glob("*.py"))) >= 3


def test_charging_imports_only_stdlib_and_itself() -> None:
    for module in CORE.glob("*.py"):
        for name in imported_modules(module):
            top = name.split(".")[0]
            ok = name.startswith("edgepoint.charging") or top in sys.stdlib_module_names
            assert ok, f"{module.name} imports {name}"
