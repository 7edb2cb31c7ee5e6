"""The package's structure, read from its source: the engine's imports form a one-way
ladder (no module imports one that imports it back, TYPE_CHECKING imports included), the
engine imports nothing of the Metaflow glue, and private Metaflow APIs are imported only
by plugins/metaflow_internals.py.

    python tests/test_structure.py     # prints the engine's import levels
"""

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "metaflow_extensions" / "implicit_checkpoint"
ENGINE = PACKAGE / "engine"
#: Metaflow modules an extension may import: its public API and the extension points.
PUBLIC_METAFLOW = (
    "metaflow",
    "metaflow.cards",
    "metaflow.decorators",
    "metaflow.exception",
    "metaflow.metaflow_config_funcs",
    "metaflow.unbounded_foreach",
)
INTERNALS = PACKAGE / "plugins" / "metaflow_internals.py"


def _imports(path: Path) -> List[ast.AST]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def engine_graph() -> Dict[str, Set[str]]:
    """Each engine module and the engine modules it imports."""
    modules = {p.stem for p in ENGINE.glob("*.py")}
    graph = {}
    for path in ENGINE.glob("*.py"):
        found = set()
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import x
                    found.update(a.name for a in node.names if a.name in modules)
                elif node.module.split(".")[0] in modules:
                    found.add(node.module.split(".")[0])
        graph[path.stem] = found - {path.stem}
    return graph


def levels(graph: Dict[str, Set[str]]) -> Dict[str, int]:
    """The level of each module: 1 + the highest level of what it imports (a cycle raises)."""
    level: Dict[str, int] = {}
    visiting: List[str] = []

    def visit(name: str) -> int:
        if name in level:
            return level[name]
        if name in visiting:
            raise AssertionError("import cycle: %s" % " -> ".join(visiting[visiting.index(name):] + [name]))
        visiting.append(name)
        level[name] = 1 + max((visit(d) for d in graph[name]), default=0)
        visiting.pop()
        return level[name]

    for name in graph:
        visit(name)
    return level


def test_the_engines_imports_are_one_way():
    found = levels(engine_graph())
    assert len(found) == len(list(ENGINE.glob("*.py")))  # every module was read


def test_the_engine_imports_no_metaflow_glue():
    offenders = []
    for path in ENGINE.glob("*.py"):
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                offenders.append("%s imports %s%s" % (path.name, "." * node.level, node.module or ""))
    assert offenders == []


def test_private_metaflow_apis_are_imported_only_by_metaflow_internals():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == INTERNALS:
            continue
        for node in _imports(path):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            )
            for name in names:
                if name.split(".")[0] == "metaflow" and name not in PUBLIC_METAFLOW:
                    offenders.append("%s imports %s" % (path.relative_to(PACKAGE), name))
    assert offenders == []


if __name__ == "__main__":
    graph = engine_graph()
    by_level: Dict[int, List[str]] = {}
    for name, number in levels(graph).items():
        by_level.setdefault(number, []).append(name)
    for number in sorted(by_level, reverse=True):
        print("level %2d: %s" % (number, ", ".join(sorted(by_level[number]))))
    print("%d modules on %d levels, no cycle" % (len(graph), len(by_level)), file=sys.stderr)
