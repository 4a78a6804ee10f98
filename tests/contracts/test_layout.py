"""The house rules of the package layout: every import arrow points one way.

Imports are read from the source (module level and inside functions alike), so a lazy import that
closes a cycle is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import conceptkit

ROOT = Path(conceptkit.__file__).resolve().parent
SHARED = {"conceptkit._validation", "conceptkit._torchutils", "conceptkit._deprecation",
          "conceptkit._reprs", "conceptkit._version", "conceptkit.io"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str) -> set[str]:
    """conceptkit modules that module ``name`` imports, anywhere in its body."""
    path = MODULES[name]
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "conceptkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "conceptkit":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _subpackage(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_module_at_the_top_level_but_shared_utilities():
    top = {name for name in MODULES if name.count(".") == 1 and not _is_package(name)}
    private = {name for name in top if name.rpartition(".")[2].startswith("_")}
    assert private <= SHARED | {"conceptkit.__main__"}, sorted(private - SHARED)


# (subpackage, subpackages it must never import)
FORBIDDEN = {
    "extraction": {"concepts", "importance", "maps", "report", "pipeline", "bottleneck",
                   "datasets", "models", "cli", "evaluate", "naming"},
    "concepts": {"importance", "maps", "report", "pipeline", "datasets", "models", "cli",
                 "evaluate", "naming"},
    "importance": {"maps", "report", "pipeline", "datasets", "models", "cli", "evaluate",
                   "naming"},
    "maps": {"importance", "report", "pipeline", "datasets", "models", "cli", "evaluate",
             "naming"},
    "report": {"pipeline", "datasets", "models", "cli", "evaluate", "naming"},
    # bottleneck may use report's public face (its pages), never report's internals (below)
    "bottleneck": {"pipeline", "datasets", "models", "cli"},
    "pipeline": {"datasets", "cli"},
    # naming names the concepts of a ClassConcepts taken by duck typing: the pipeline keeps the
    # names (ClassConcepts.name_concepts), so naming may never import it back
    "naming": {"pipeline", "datasets", "models", "cli", "evaluate"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    wrong = sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                   if _subpackage(name) == package
                   for target in targets if _subpackage(target) in FORBIDDEN[package])
    assert not wrong, "\n".join(wrong)


def test_bottleneck_uses_only_the_face_of_report():
    wrong = sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                   if _subpackage(name) == "bottleneck"
                   for target in targets if target.startswith("conceptkit.report."))
    assert not wrong, "\n".join(wrong)


def test_every_public_name_is_reachable_from_its_face():
    import importlib

    for name in sorted(MODULES):
        if not _is_package(name):
            continue
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", []):
            assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which it lacks"


def test_one_version_for_the_package_and_its_files():
    # pyproject's version is what pip installs; conceptkit.__version__ is what files and reports
    # record: the two must be the same string
    import re

    text = (Path(conceptkit.__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert conceptkit.__version__ == declared
    assert declared != "0.1.0"  # files written by this code are not 0.1.0's
