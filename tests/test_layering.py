"""The layering of docs/architecture.md holds: each package imports only the layers below it.

Every ``import`` and ``from … import`` in ``src/minsharp`` counts, those inside functions too
(a cycle dodged by a late import is still a cycle). The table below is the one the document
shows; change both together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "minsharp"

#: The layers from the bottom up: a package may import the packages of its own layer's
#: ``may_import`` list and nothing else of minsharp (the standard library, torch, numpy and
#: scipy are always allowed).
FOUNDATION = {"errors", "options", "tensors", "io", "distributed"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "tensors": {"errors"},
    "options": {"errors"},
    "io": {"errors", "tensors"},
    "distributed": {"errors"},
    "data": FOUNDATION,
    "models": FOUNDATION,
    "curvature": FOUNDATION | {"data"},
    "solvers": FOUNDATION,
    "symmetry": FOUNDATION | {"data", "curvature", "solvers"},
    "objective": FOUNDATION | {"data", "curvature"},
    "measures": FOUNDATION | {"data", "curvature", "solvers", "symmetry", "objective"},
    "training": FOUNDATION | {"data", "curvature", "measures", "models", "objective"},
    "study": FOUNDATION
    | {"data", "curvature", "measures", "models", "symmetry", "solvers", "training"},
    "cli": FOUNDATION
    | {"data", "curvature", "measures", "models", "symmetry", "study", "training"},
    # The package's front doors: the public names, the deprecated module, python -m.
    "__init__": {"errors", "io", "curvature", "measures", "symmetry"},
    "train": {"training"},
    "__main__": {"cli"},
}

#: Inside ``study``: the shared core and report parts never import a kind's folder; a kind
#: never imports another kind. Only ``study/kinds.py`` (the table of kinds) sees them all.
STUDY_SHARED = {"core", "report"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("minsharp", *parts)), path


def _imports(path: Path) -> Iterator[str]:
    """Every module an import in ``path`` may name (relative imports are banned by ruff)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from package import submodule`` imports the submodule (and the package's
            # __init__, which the package's own layer check covers).
            named = [f"{node.module}.{alias.name}" for alias in node.names]
            submodules = [name for name in named if name in MODULES]
            yield from submodules or [node.module]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = dict(_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_layers_below_it(module):
    own = _top(module)
    assert own in MAY_IMPORT, (
        f"{module} is in a package docs/architecture.md does not place: add {own!r} to "
        "MAY_IMPORT here and to the layer table there."
    )
    wrong = sorted(
        {
            target
            for target in _imports(MODULES[module])
            if target in MODULES and _top(target) not in MAY_IMPORT[own] | {own}
        }
    )
    assert not wrong, f"{module} imports {wrong}; {own} may import {sorted(MAY_IMPORT[own])}"


STUDY_PARTS = sorted(m for m in MODULES if m.startswith("minsharp.study.") and m.count(".") >= 3)


@pytest.mark.parametrize("module", STUDY_PARTS)
def test_study_kinds_stay_apart_and_the_core_never_imports_a_kind(module):
    own = module.split(".")[2]
    allowed = STUDY_SHARED if own in STUDY_SHARED else STUDY_SHARED | {own}
    seen = {
        target.split(".")[2]
        for target in _imports(MODULES[module])
        if target.startswith("minsharp.study.") and target in MODULES
    }
    assert seen <= allowed, (
        f"{module} imports study parts {sorted(seen - allowed)}: the core and report parts are "
        "shared by every kind, and kinds do not import each other."
    )


def test_there_is_no_import_cycle():
    graph = {
        module: {t for t in _imports(path) if t in MODULES and t != module}
        for module, path in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
