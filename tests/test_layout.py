"""The layout shows the pipeline: each subpackage of archc imports only the stages below
it (lazy imports inside functions included), no module imports another's private names,
and the module import graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "archc"

# Bottom to top. Stages on one floor do not import each other.
FLOORS = [("syntax",), ("ir",), ("passes",), ("codegen",), ("training", "tools"), ("backends",), ("",)]
FLOOR = {stage: i for i, stages in enumerate(FLOORS) for stage in stages}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else ""


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every archc import in ``path``, relative ones resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "archc" or base.startswith("archc."):
                names = [a.name for a in node.names]
                # `from archc.x import y` may name a submodule y
                subs = [f"{base}.{n}" for n in names if (ROOT.parent / f"{base}.{n}".replace(".", "/")).with_suffix(".py").exists()]
                found.append((base, names, node.lineno))
                found.extend((s, [], node.lineno) for s in subs)
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names if a.name.startswith("archc"))
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_archc_module_lives_in_a_stage_or_on_top():
    top = sorted(m for m in MODULES if stage(m) == "" and m != "archc")
    assert top == ["archc.__main__", "archc.api", "archc.cli"]
    assert {stage(m) for m in MODULES} <= set(FLOOR)
    for pkg in {stage(m) for m in MODULES} - {""}:
        doc = ast.get_docstring(ast.parse((ROOT / pkg / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"archc/{pkg}/__init__.py needs a paragraph saying what it holds"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_pipeline_only(module):
    here = stage(module)
    for target, _, line in imports(MODULES[module]):
        there = stage(target)
        if there == here:
            continue
        assert FLOOR[there] < FLOOR[here], f"{module}:{line} imports {target}: archc.{there} is not below archc.{here or '(top)'}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(module):
    for target, names, line in imports(MODULES[module]):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module}:{line} imports {private} from {target}"


def test_module_imports_have_no_cycle():
    graph = {m: {t for t, _, _ in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ is imported with each of its modules; only module-to-module edges count
    graph = {m: {t for t in ts if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(t) :], t]))
            if t not in state:
                visit(t, [*trail, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
