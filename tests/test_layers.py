"""The architecture as a test: the core (``pdm_bench/`` below the entry layer) never imports the components
(``defenses``, ``threat_models``, ``reports``), and no import cycle exists anywhere in the package (imports inside functions
count; ``if TYPE_CHECKING:`` ones do not)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pdm_bench": ROOT / "pdm_bench", "pdm_bench.defenses": ROOT / "defenses",
            "pdm_bench.threat_models": ROOT / "threat_models", "pdm_bench.reports": ROOT / "reports"}
ENTRY_LAYER = {"pdm_bench", "pdm_bench.cli", "pdm_bench.api", "pdm_bench.__main__"}
COMPONENTS = ("pdm_bench.defenses", "pdm_bench.threat_models", "pdm_bench.reports")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from pdm_bench.x import y`` counts as x, or x.y if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and "TYPE_CHECKING" in ast.unparse(stmt.test) for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known)) - {name} for name, path in known.items()}


def test_the_core_never_imports_a_component() -> None:
    backward = [f"{module} imports {target}" for module, targets in graph().items()
                if not module.startswith(COMPONENTS) and module not in ENTRY_LAYER for target in targets if target.startswith(COMPONENTS)]
    assert backward == []


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_walk_sees_imports() -> None:  # the two tests above would pass on an empty graph
    edges = graph()
    assert "pdm_bench.evaluation" in edges["pdm_bench.threat_models.gray"]
    assert "pdm_bench.threat_models.gray" not in edges["pdm_bench.evaluation"]
    assert len(edges) > 40
