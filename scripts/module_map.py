"""The package's module map: modules, lines, internal imports (and how many sit inside functions),
module edges, import cycles (counting function-level imports) and the largest module.

    python scripts/module_map.py                      # this checkout's src/busai
    python scripts/module_map.py --commit d6d0d12     # any commit, read with `git archive` into a temporary folder

The graph and the cycle finder are the ones tests/test_architecture.py checks.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_architecture import find_cycles, import_graph  # noqa: E402


def internal_imports(src: Path) -> tuple[int, int]:
    """(import statements naming the package, of which inside a function)."""
    total = inside = 0
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else None
            if names is None or not (getattr(node, "level", 0) or any(n == src.name or n.startswith(src.name + ".") for n in names)):
                continue
            total += 1
            inside += id(node) in in_function
    return total, inside


def module_map(src: Path) -> dict:
    graph = import_graph(src)
    files = sorted(src.rglob("*.py"))
    lines = {path: len(path.read_text().splitlines()) for path in files}
    largest = max(lines, key=lines.get)
    total, inside = internal_imports(src)
    return {
        "modules": len(files),
        "lines": sum(lines.values()),
        "internal import statements": f"{total} ({inside} in functions)",
        "module edges": sum(len(v) for v in graph.values()),
        "import cycles": len(find_cycles(graph)),
        "largest module": f"{largest.relative_to(src)} ({lines[largest]} lines)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="a commit to map instead of the working tree")
    args = parser.parse_args()
    if args.commit is None:
        result = module_map(ROOT / "src" / "busai")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.commit, "src/busai"], check=True, capture_output=True).stdout
            archive_path = Path(tmp) / "src.tar"
            archive_path.write_bytes(archive)
            with tarfile.open(archive_path) as tar:
                tar.extractall(tmp, filter="data")
            result = module_map(Path(tmp) / "src" / "busai")
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
