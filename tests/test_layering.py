"""The package layering, read from the source with ast (every import, also those inside functions):
the core imports no adapter, bridge or storage module outside the CLI's composition root, and the
storage modules import each other without a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: source folder -> the package it installs as (pyproject's package-dir)
PACKAGES = {"core": "stepbridge", "adapters": "stepbridge.adapters", "bridge": "stepbridge.bridge",
            "storage": "stepbridge.storage", "conformance_tests": "stepbridge.conformance"}
OUTSIDE_CORE = tuple(p for p in PACKAGES.values() if p != "stepbridge")
#: the command line puts the parts together: ``stepbridge.cli`` and the sub-command apps it mounts
COMPOSITION_ROOT = ("stepbridge.cli", "stepbridge.eval_cli", "stepbridge.optimize_cli")
#: Known breaks, each to be fixed where it is written (the test fails when one is fixed, so this list
#: only shrinks). Empty: evaluations and optimizations take their store through protocols
#: (EvaluationStore, OptimizationStore), as the Runner takes a Recorder.
KNOWN: set[str] = set()


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_the_helpers_read_the_tree() -> None:
    assert module_name(REPO / "core" / "reference_lm" / "app.py") == "stepbridge.reference_lm.app"
    assert "stepbridge.storage" in set(imports(REPO / "core" / "cli.py"))
    assert "stepbridge.secrets" in set(imports(REPO / "core" / "reference_lm" / "app.py"))  # from ..secrets


@pytest.mark.parametrize("path", sources("core"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_imports_no_adapter_bridge_or_storage_module(path: Path) -> None:
    name = module_name(path)
    if name in COMPOSITION_ROOT:
        return
    wrong = sorted({m for m in imports(path) if m.startswith(OUTSIDE_CORE)})
    if name in KNOWN:
        assert wrong, f"{name} no longer breaks the layering: remove it from KNOWN"
        pytest.xfail(f"known: {name} imports {', '.join(wrong)}")
    assert not wrong, f"{path.relative_to(REPO)} imports {', '.join(wrong)}: only the CLI may"


def test_the_storage_modules_import_each_other_without_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in sources("storage"):
        name = module_name(path)
        graph[name] = {m for m in imports(path) if m.startswith("stepbridge.storage.")} - {name}
    modules = set(graph)
    graph = {name: {m for m in deps if m in modules} for name, deps in graph.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name):], name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
