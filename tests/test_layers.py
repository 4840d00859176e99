"""The package's layers import one way, with no cycle (docs/ARCHITECTURE.md draws them).

Every import counts: at the top of a module, inside functions (lazy), and under
`TYPE_CHECKING`. `from pynenc_lite.x import y` counts as importing `pynenc_lite.x.y` when
that is a module, else `pynenc_lite.x`. Importing a submodule is not counted as importing its
parent package's `__init__` (Python runs it, but the package `__init__` files only re-export
what lies below them, which the graph checks on their own).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "pynenc_lite"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("errors", "status", "serializer", "options", "cron", "importing",
                     "compat", "pynenc_paths", "config_fields", "config_reading", "conf",
                     "tables", "toml_subset", "logs")),
    ("storage", ("backend",)),
    ("runtime", ("runtime", "waiting", "execution")),
    ("calls", ("invocation", "invoke", "task")),
    ("runners", ("runner",)),
    # "" is the package's __init__; builder makes Pynenc apps the pynenc way.
    ("facade", ("app", "builder", "")),
    ("command lines", ("loading", "worker", "admin", "server", "__main__")),
]
# The facade is imported only from above it.
FACADE_IMPORTERS = {PACKAGE, f"{PACKAGE}.builder", f"{PACKAGE}.loading", f"{PACKAGE}.worker",
                    f"{PACKAGE}.admin", f"{PACKAGE}.__main__"}


def module_files() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> int:
    relative = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    head = relative.split(".")[0]
    for index, (_, heads) in enumerate(LAYERS):
        if head in heads:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
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
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_checker_sees_the_whole_package() -> None:
    graph = import_graph()
    assert {f"{PACKAGE}.app", f"{PACKAGE}.runtime", f"{PACKAGE}.runner.thread_runner"} <= set(
        graph
    )
    assert f"{PACKAGE}.runtime" in graph[f"{PACKAGE}.app"]  # edges are found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    upward = [
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} "
        f"({LAYERS[layer_of(target)][0]})"
        for source, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_only_the_command_lines_and_the_package_import_the_facade() -> None:
    importers = {
        source for source, targets in import_graph().items() if f"{PACKAGE}.app" in targets
    }
    assert importers <= FACADE_IMPORTERS, sorted(importers - FACADE_IMPORTERS)
