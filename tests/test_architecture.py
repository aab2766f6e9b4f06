"""The structure the code keeps: no import cycle in the Python package, no oversized product
file, and no reference to a document that is not in the repository."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "python" / "memory_service_processor"
PACKAGE = "memory_service_processor"

#: Longest product source file, in lines.
MAX_LINES = 600

#: Names of documents outside the repository that nothing may cite (assembled from parts so
#: that this file, which names them to forbid them, does not read as citing them itself).
OUTSIDE_DOCUMENTS = tuple(
    name + ".md" for name in ("wire-contract", "python-api", "runtime-semantics", "concurrency", "upstream-events")
) + ("../" + "shared", "the " + "seed", "seed" + "'s")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_modules() -> Dict[str, Path]:
    """Every module of the package; an extension module counts by its ``.pyi`` stub."""
    modules = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.pyi"))}
    modules.update({_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))})
    return modules


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name ``from <node.module>`` names, inside ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports, from every import statement (at module
    level, in functions, under ``if TYPE_CHECKING``): ``from . import x`` counts as an import of
    the submodule ``x`` when there is one, else of the package."""
    modules = _package_modules()
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        if path.suffix == ".pyi":
            continue  # a compiled module: it imports nothing of the package's Python
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                # `import a.b.c` imports the deepest module of the package it names.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target.startswith(PACKAGE) and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle (its modules, the first repeated at the end), or ``None``."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # Module level, relative, from a subpackage to the package above.
    assert f"{PACKAGE}._settings" in graph[f"{PACKAGE}._config"]
    assert f"{PACKAGE}.testing.server" in graph[f"{PACKAGE}._cli.demo"]
    # A function-level import counts as much as one at the top.
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _product_files() -> List[Path]:
    rust = [p for p in (ROOT / "src").rglob("*.rs") if not p.name.endswith("_tests.rs") and p.name != "tests.rs"]
    python = list((ROOT / "python").rglob("*.py"))
    return sorted(rust + python)


def test_no_product_file_is_longer_than_600_lines() -> None:
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in _product_files()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, f"longer than {MAX_LINES} lines: {too_long}"


def _cited_files() -> List[Path]:
    files: List[Path] = [ROOT / "README.md"]
    for directory in ("src", "python", "tests", "docs", "bench"):
        files.extend(p for p in (ROOT / directory).rglob("*") if p.is_file() and p.suffix in {".rs", ".py", ".pyi", ".md", ".toml", ".txt", ".proto"})
    return sorted(p for p in files if p.resolve() != Path(__file__).resolve() and "__pycache__" not in p.parts)


def test_nothing_cites_a_document_outside_the_repository() -> None:
    citing = {
        str(p.relative_to(ROOT)): [name for name in OUTSIDE_DOCUMENTS if name in p.read_text(encoding="utf-8", errors="replace")]
        for p in _cited_files()
    }
    citing = {path: names for path, names in citing.items() if names}
    assert not citing, f"cites files outside the repository: {citing}"
