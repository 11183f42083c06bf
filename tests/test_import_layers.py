"""No import cycles: between modules, and between the package's parts (a subpackage or top-level
module), counting imports inside functions too (they hid the circle assets -> modeling -> backends ->
evaluation -> assets). The layers are drawn in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / "conan_embed").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (`from a import b` counts b when
    b is a module, else a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("conan_embed") and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends at the same node, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part(module: str) -> str:
    """conan_embed.recipe.stage_training -> conan_embed.training; conan_embed.modeling stays."""
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def test_find_cycle_finds_planted_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    pkg = tmp_path / "conan_embed" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from conan_embed.sub import b\n")
    (pkg / "b.py").write_text("from . import a\nfrom .a import f\n")
    known = {"conan_embed.sub": pkg / "__init__.py", "conan_embed.sub.a": pkg / "a.py", "conan_embed.sub.b": pkg / "b.py"}
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert graph["conan_embed.sub.a"] == {"conan_embed.sub.b"} and graph["conan_embed.sub.b"] == {"conan_embed.sub.a"}
    assert find_cycle(graph) == ["conan_embed.sub.a", "conan_embed.sub.b", "conan_embed.sub.a"]


def test_no_module_imports_a_module_that_imports_it_back(graph):
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_part_of_the_package_imports_a_part_that_imports_it_back(graph):
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        parts.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    cycle = find_cycle(parts)
    assert cycle is None, f"import cycle between parts: {' -> '.join(cycle)}"


def test_no_two_files_share_a_name():
    """A file name says what it holds wherever it is quoted (docs, tracebacks): no stage.py twice."""
    seen: dict[str, list[str]] = {}
    for path in (SRC / "conan_embed").rglob("*.py"):
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
