"""The package's import graph, counting imports inside functions, has no cycle.

A cycle hidden behind a function-level import still ties the modules together: none of them can be
understood, tested or moved alone. Shared pieces belong in a leaf module both sides import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import busai

SRC = Path(busai.__file__).resolve().parent


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> internal modules it imports anywhere in its file (top level or inside functions).

    ``from busai.x import y`` counts as importing ``busai.x.y`` when that is a module, else ``busai.x``.
    A package's ``__init__`` is not counted as imported by its own submodules' ``from . import``
    of a sibling: the edge goes to the sibling.
    """
    package = src.name
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # import busai.a.b -> busai.a.b, else its package
                    target = target.rpartition(".")[0]
                if (target == package or target.startswith(package + ".")) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete path a -> b -> ... -> a inside one component, to print."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first back to start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    out = [v]
                    while out[-1] != start:
                        out.append(prev[out[-1]])
                    return [start, *reversed(out[:-1]), start] if len(out) > 1 else [start, v, start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return path


def test_cycle_finder_sees_function_level_imports(tmp_path):
    graph = {"busai.a": {"busai.b"}, "busai.b": {"busai.c"}, "busai.c": {"busai.a"}, "busai.d": {"busai.a"}}
    assert find_cycles(graph) == [["busai.a", "busai.b", "busai.c"]]
    assert _one_cycle(graph, ["busai.a", "busai.b", "busai.c"]) == ["busai.a", "busai.b", "busai.c", "busai.a"]
    assert find_cycles({"busai.a": {"busai.b"}, "busai.b": set()}) == []


def test_graph_counts_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import json\n\ndef f():\n    from pkg.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    (pkg / "c.py").write_text("import pkg.sub.b as b\nfrom . import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.sub.b", "pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    message = "\n".join(" -> ".join(_one_cycle(graph, c)) + f"   (component: {', '.join(c)})" for c in cycles)
    assert not cycles, f"import cycles (counting imports inside functions):\n{message}"


# Moving a finished file or folder into place is busai.outputs' job alone (atomic_path, atomic_folder);
# the study modules leave the package.
_RENAME_EXEMPT = {"outputs.py", "study_report.py"}


def _renames(tree: ast.AST) -> list[int]:
    """Lines calling os.replace / os.rename, or Path.replace / Path.rename (one argument; str.replace takes two)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace", "rename"):
            on_os = isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
            if on_os or (len(node.args) == 1 and not node.keywords):
                lines.append(node.lineno)
    return lines


def test_rename_finder():
    tree = ast.parse("import os\nos.replace(a, b)\ntmp.replace(path)\nname.replace('/', '_')\np.rename(q)\n")
    assert _renames(tree) == [2, 3, 5]


def test_one_atomic_writer():
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel not in _RENAME_EXEMPT:
            found += [f"{rel}:{line}" for line in _renames(ast.parse(path.read_text()))]
    assert not found, f"write through busai.outputs.atomic_write / atomic_path instead of renaming by hand: {found}"
