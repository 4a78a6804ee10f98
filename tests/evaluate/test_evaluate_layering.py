"""conceptkit.evaluate sits above maps, importance, concepts and extraction: nothing lower imports
it, and it imports no pipeline, report, CLI or dataset code (it reads explanations and worlds by
duck typing)."""

from __future__ import annotations

import ast
from pathlib import Path

import conceptkit

ROOT = Path(conceptkit.__file__).parent
LOWER = ("extraction", "concepts", "importance", "maps", "datasets", "bottleneck", "models",
         "_validation", "_torchutils", "io")
FORBIDDEN_FOR_EVALUATE = ("pipeline", "report", "cli", "datasets", "_results", "naming", "_demo")


def imported_modules(path: Path) -> set[str]:
    """Absolute ``conceptkit...`` names imported by the module at ``path``."""
    package = list(path.relative_to(ROOT.parent).parts[:-1])  # the module's package
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in out if name.startswith("conceptkit")}


def modules_of(top: str) -> list[Path]:
    target = ROOT / top
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def test_nothing_lower_imports_evaluate():
    offenders = []
    for top in LOWER:
        for path in modules_of(top):
            if path.exists() and any(name == "conceptkit.evaluate" or
                                     name.startswith("conceptkit.evaluate.")
                                     for name in imported_modules(path)):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_evaluate_imports_only_lower_layers():
    found = set()
    for path in modules_of("evaluate"):
        found |= imported_modules(path)
    assert "conceptkit.maps" in found  # the localisation scores are the maps module's
    bad = sorted(name for name in found for top in FORBIDDEN_FOR_EVALUATE
                 if name == f"conceptkit.{top}" or name.startswith(f"conceptkit.{top}."))
    assert bad == []
