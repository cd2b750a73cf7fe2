"""No import cycles between the modules of rlar: every import counts (module level, inside functions, under
TYPE_CHECKING), ``from package import name`` is an edge to the submodule when ``name`` is one, and a package's
``__init__`` imports are edges of the package module."""

import ast
from pathlib import Path

import rlar

ROOT = Path(rlar.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The rlar modules an ``import`` / ``from ... import`` statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
    if base in modules and len(found) < len(node.names):  # some names are attributes of the module itself
        found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    modules = set(files)
    return {name: {target for node in ast.walk(ast.parse(path.read_text()))
                   for target in imported(node, name, path.name == "__init__.py", modules) if target != name}
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "rlar.runtime.distributed" in graph["rlar.loop"]  # from rlar.runtime import distributed: a submodule
    assert "rlar.eval.model" in graph["rlar.build"]  # from rlar.eval.model import ...: the package's names
    assert "rlar.loop" in graph["rlar"]  # a package's __init__ imports


def test_imports_inside_functions_and_relative_imports_count():
    source = "def f():\n from rlar.runtime import distributed, hardware\n from . import cache\n from .x import y"
    modules = {"rlar.runtime", "rlar.runtime.distributed", "rlar.runtime.hardware", "rlar.runtime.cache",
               "rlar.runtime.x"}
    found = {t for node in ast.walk(ast.parse(source)) for t in imported(node, "rlar.runtime.logger", False, modules)}
    assert found == {"rlar.runtime.distributed", "rlar.runtime.hardware", "rlar.runtime.cache", "rlar.runtime.x"}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles between rlar modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
