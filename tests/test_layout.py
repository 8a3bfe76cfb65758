"""The package's layout: imports point one way, cli -> areas -> shared modules, and never in a cycle.

    .venv/bin/pytest tests/test_layout.py

Every `import qrtrain...` is read from the source (the ones inside functions too), nothing is imported.
A module may import its own area and the layers below its own; training and evaluation, side by side,
do not import each other.
"""

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qrtrain"

# Lowest first. An area is a module or a folder of the package.
LAYERS = [
    ["qrtrain", "qrtrain.errors", "qrtrain.files"],
    ["qrtrain.config", "qrtrain.terminal", "qrtrain.events"],
    ["qrtrain.data"],
    ["qrtrain.models"],
    ["qrtrain.artifacts"],
    ["qrtrain.training", "qrtrain.evaluation"],
    ["qrtrain.deploy"],
    ["qrtrain.service", "qrtrain.synth"],
    ["qrtrain.cli"],
    ["qrtrain.__main__"],
]
LEVEL = {area: level for level, areas in enumerate(LAYERS) for area in areas}


def module_name(path: Path, package: Path) -> str:
    parts = ["qrtrain", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: qrtrain modules it imports}, read from every .py file under the package."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "qrtrain"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "qrtrain":
                # `from qrtrain.evaluation import report` imports the module qrtrain.evaluation.report
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
        graph[name] = found - {name}
    return graph


def area(module: str) -> str:
    return max((a for a in LEVEL if module == a or module.startswith(a + ".")), key=len)


def layout_problems(graph: dict[str, set[str]]) -> list[str]:
    """Upward or sideways imports between areas, and import cycles between modules."""
    problems = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            mine, theirs = area(module), area(target)
            if mine != theirs and LEVEL[theirs] >= LEVEL[mine]:
                problems.append(f"{module} imports {target}: {mine} may not import {theirs}")
    state, stack = {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                problems.append("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return problems


def test_every_module_has_an_area():
    unplaced = [m for m in import_graph(PACKAGE) if not any(m == a or m.startswith(a + ".") for a in LEVEL)]
    assert unplaced == []


def test_imports_point_down_and_never_in_a_cycle():
    assert layout_problems(import_graph(PACKAGE)) == []


@pytest.mark.parametrize("file, line, expected", [
    ("training/train.py", "from qrtrain.cli import app", "qrtrain.training may not import qrtrain.cli"),
    ("evaluation/compare.py", "from qrtrain.training.train import train", "qrtrain.evaluation may not import qrtrain.training"),
    ("artifacts/verify.py", "from qrtrain.evaluation import report", "qrtrain.artifacts may not import qrtrain.evaluation"),
    ("errors.py", "import qrtrain.config", "qrtrain.errors may not import qrtrain.config"),
    ("artifacts/manifest.py", "from qrtrain.artifacts.verify import verify",
     "import cycle: ...qrtrain.artifacts.manifest -> qrtrain.artifacts.verify..."),  # wherever the cycle is entered
])
def test_an_introduced_upward_import_or_cycle_fails(tmp_path, file, line, expected):
    """The same check over a copy of the package with one import added inside a function."""
    copy = tmp_path / "qrtrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data", "chat_templates"))
    source = copy / file
    source.write_text(source.read_text() + f"\n\ndef _added():\n    {line}\n")
    problems = layout_problems(import_graph(copy))
    if expected.startswith("import cycle: ..."):  # a cycle is reported from the module where the search entered it
        edge = expected.removeprefix("import cycle: ...").removesuffix("...")
        assert any(p.startswith("import cycle:") and edge in p for p in problems), problems
    else:
        assert any(expected in p for p in problems), problems
