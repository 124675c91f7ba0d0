"""One record per op: every op class carries its framework-neutral facts (archc/ir/ops.py),
every bundled backend has one record of it in one table, and nothing else in archc
switches on an op's type or name (docs/adding-an-op.md).

The combinators (residual, gate, branches, repeat, and a block call) are structure: the
walks over the tree (instances, naming, diagrams, fold pairs) may ask which one a node is,
so the no-switch scan lets ``isinstance(node, Call)`` and ``node.op == "repeat"`` pass. It
refuses the same question about an op (a conv, a batch norm, ...): that belongs on the op's
class or in its records."""

from __future__ import annotations

import ast
import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from archc.backends.torch_backend.ops import TorchWeights
from archc.codegen.backend import GROUP
from archc.ir import ops as ir

ROOT = Path(__file__).resolve().parents[1]
torch_render = importlib.import_module("archc.backends.torch_backend.render")  # the package exports a function of that name
keras_render = importlib.import_module("archc.backends.keras_backend.render")
OPS = ir.OP_CLASSES  # the ops proper: each has a label, a fill, records with weights where it has roles
STRUCTURE = (*ir.COMBINATOR_CLASSES, ir.Call)
EVERY_CLASS = (*OPS, *STRUCTURE)
RECORDS = {"torch": torch_render.OPS, "keras": keras_render.OPS}  # the bundled backends' tables
INPUT = (8, 8, 4)

# Required fields of an instance per op (ops whose fields all have defaults need none).
SAMPLES: dict[str, dict] = {
    "conv": {"filters": 6, "kernel": 3},
    "depthwise": {"kernel": 3},
    "sepconv": {"filters": 6, "kernel": 3},
    "act": {"kind": "relu"},
    "zero_pad": {"padding": 1},
    "rescale": {"scale": 0.5},
    "maxpool": {"pool": 2},
    "avgpool": {"pool": 2},
    "dense": {"units": 3},
    "channel_dense": {"units": 3},
    "dropout": {"rate": 0.1},
    "drop_path": {"rate": 0.1},
    "resize": {"like": "skip"},
    "crop": {"like": "skip"},
    "split": {"parts": 2},
    "conv_transpose": {"filters": 6, "kernel": 3},
    "residual": {"body": [{"op": "identity", "name": "i"}]},
    "gate": {"body": [{"op": "identity", "name": "i"}]},
    "branches": {"paths": {"a": [{"op": "identity", "name": "i"}], "b": [{"op": "identity", "name": "j"}]}},
    "repeat": {"times": 2, "body": [{"op": "identity", "name": "i"}]},
    "call": {"block": "b", "body": [{"op": "identity", "name": "i"}]},
}


def op_name(cls: type[ir.Node]) -> str:
    return cls.model_fields["op"].default


def sample(cls: type[ir.Node]) -> ir.Node:
    try:
        return cls(name="x", **SAMPLES.get(op_name(cls), {}))
    except Exception as error:  # noqa: BLE001 - say what to do, whatever pydantic says
        pytest.fail(f"give SAMPLES in {Path(__file__).name} the required fields of '{op_name(cls)}': {error}")


class Probe:
    """A stand-in torch module: every attribute is another probe (m.pointwise.weight)."""

    def __getattr__(self, name: str) -> Probe:
        return Probe()


class Draw:
    """verify's Draw, with constant arrays: enough to see which roles an op fills."""

    spread, linear_output = 0.2, 0.25

    def __init__(self):
        self.np = pytest.importorskip("numpy")

    def normal(self, shape, std):
        return self.np.full(shape, std, self.np.float32)

    def kernel(self, shape, fan_in, m2, target=0.25):
        return self.np.ones(shape, self.np.float32)

    def around_one(self, shape):
        return self.np.ones(shape, self.np.float32)

    def zeros(self, shape):
        return self.np.zeros(shape, self.np.float32)

    def bias(self, shapes):
        return {"bias": self.zeros(shapes["bias"])} if "bias" in shapes else {}

    def squash(self, activation):
        return 0.5


# -- coverage: every op has every record ---------------------------------------------------


def test_the_tables_hold_exactly_the_ops():
    names = {op_name(cls) for cls in EVERY_CLASS}
    for backend, table in RECORDS.items():
        assert set(table) == names, f"{backend}: records for {sorted(set(table) - names)}, none for {sorted(names - set(table))}"
    bundled = {ep.name for ep in entry_points(group=GROUP) if ep.value.startswith("archc.backends.")}
    assert bundled <= set(RECORDS), f"a bundled backend without its table here: {sorted(bundled - set(RECORDS))}"


@pytest.mark.parametrize("cls", OPS, ids=op_name)
def test_every_op_has_its_neutral_facts(cls):
    node = sample(cls)
    label = node.diagram_label()
    assert isinstance(label, str) and label, f"'{node.op}' needs a diagram_label"
    assert re.fullmatch(r"#[0-9a-f]{6}", cls.fill), f"'{node.op}' fill {cls.fill!r} is not a colour"
    assert cls.shorthand is None or cls.shorthand in cls.model_fields, f"'{node.op}' shorthand names no field"
    assert not cls.shorthand_list or cls.shorthand, "a list shorthand needs a shorthand"
    roles = node.roles(INPUT)
    assert cls.fold_role is None or cls.fold_role in roles, f"'{node.op}' folds into {cls.fold_role!r}, not one of its roles"
    assert cls.frozen_roles <= set(roles) or not roles
    if roles:
        arrays, m2 = node.random_weights(INPUT, 1.0, Draw())
        assert {r: a.shape for r, a in arrays.items() if r in roles} == roles, f"'{node.op}': random weights for every role"
        assert m2 > 0


@pytest.mark.parametrize("backend", sorted(RECORDS))
@pytest.mark.parametrize("cls", EVERY_CLASS, ids=op_name)
def test_every_op_has_a_record_in_every_backend(cls, backend):
    op = op_name(cls)
    assert op in RECORDS[backend], f"the {backend} backend has no record of '{op}'"
    record = RECORDS[backend][op]
    node = sample(cls)
    roles = set(node.roles(INPUT))
    producer = cls.fold_role is not None
    assert (record.fold_into is not None) == producer, f"{backend} '{op}': a fold target exactly when it is a fold producer"
    if backend == "torch":
        assert (record.weights is not None) == bool(roles), f"torch '{op}': a weight mapping exactly when it has roles"
        if roles:
            assert isinstance(record.weights, TorchWeights)
            assert set(record.weights.tensors(Probe())) == roles, f"torch '{op}': the tensors of exactly its roles"
            assert set(record.weights.to_neutral) == set(record.weights.from_neutral) <= roles
        for helper in record.helpers:
            assert helper in torch_render.HELPERS, f"torch '{op}': no helper {helper}"
            assert (ROOT / f"archc/backends/torch_backend/templates/helpers/{helper}.py.j2").is_file()
    else:
        assert (record.weights is not None) == bool(roles), f"keras '{op}': weight names exactly when it has roles"
        if roles:
            parts = record.weights("x", {"x": object()}) if callable(record.weights) else [(None, record.weights)]
            assert {role for _, names in parts for role in names.values()} == roles, f"keras '{op}': names for exactly its roles"
        for name, template in record.helpers:
            assert name in keras_render.RESERVED
            assert (ROOT / "archc/backends/keras_backend/templates" / template).is_file()


# -- no switch on op type outside the records -------------------------------------------------

SCANNED = ("passes", "tools", "codegen", "backends", "training")
OP_CLASS_NAMES = {cls.__name__ for cls in OPS}
STRUCTURE_OPS = {op_name(cls) for cls in STRUCTURE}


def _op_classes_in_scope(tree: ast.AST) -> tuple[dict[str, str], set[str]]:
    """(local name -> op class name, local names of the archc.ir.ops module)."""
    classes, modules = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "archc.ir.ops":
            classes |= {a.asname or a.name: a.name for a in node.names if a.name in OP_CLASS_NAMES}
        elif isinstance(node, ast.ImportFrom) and node.module == "archc.ir":
            modules |= {a.asname or a.name for a in node.names if a.name == "ops"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "archc.ir.ops"}
    return classes, modules


def _strings(node: ast.AST) -> list[str] | None:
    """The string literals of ``"conv"`` or ``("conv", "bn")``; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(_strings(e) for e in node.elts):
        return [s for e in node.elts for s in _strings(e)]
    return None


def _is_op(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "op"


def type_switches(source: str, filename: str = "<snippet>") -> list[str]:
    """'file:line: what' for each switch on an op's type or name in ``source``."""
    tree = ast.parse(source, filename)
    classes, modules = _op_classes_in_scope(tree)

    def op_class(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and node.id in classes:
            return classes[node.id]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            return node.attr if node.attr in OP_CLASS_NAMES else None
        if isinstance(node, ast.Tuple):
            return next((c for c in map(op_class, node.elts) if c), None)
        return None

    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            if len(node.args) == 2 and (cls := op_class(node.args[1])):
                found.append(f"{where}: {node.func.id}(..., {cls})")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for a, b in zip(sides, sides[1:]):
                for x, y in ((a, b), (b, a)):
                    is_type = isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id == "type"
                    is_type |= isinstance(x, ast.Attribute) and x.attr == "__class__"
                    if is_type and (cls := op_class(y)):
                        found.append(f"{where}: type(...) compared with {cls}")
                    names = _strings(y)
                    if _is_op(x) and names and set(names) - STRUCTURE_OPS:
                        found.append(f"{where}: .op compared with {sorted(set(names) - STRUCTURE_OPS)}")
        elif isinstance(node, ast.Match) and _is_op(node.subject):
            literals = {p.value.value for p in ast.walk(node) if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant)}
            if literals - STRUCTURE_OPS or not literals:
                found.append(f"{where}: match on .op")
    return found


def test_the_scanner_finds_each_kind_of_switch():
    snippet = """
from archc.ir.ops import BN as Norm, Call, Conv
from archc.ir import ops as ir
import archc.ir.ops as o

isinstance(node, Norm)
isinstance(node, (Call, ir.Dense))
type(node) is Conv
node.__class__ == o.SepConv
node.op == "conv"
"bn" != other.op
x.node.op in ("conv", "repeat")
match node.op:
    case "depthwise":
        pass
"""
    found = type_switches(snippet)
    lines = sorted(int(f.split(":")[1]) for f in found)
    assert lines == [6, 7, 8, 9, 10, 11, 12, 13], found


def test_the_scanner_lets_structure_and_records_pass():
    snippet = """
from archc.ir.ops import Call, Repeat, Node
from archc.ir import ops as ir

isinstance(node, Call)
isinstance(node, (ir.Repeat, ir.Residual))
node.op == "call"
node.op not in ("repeat", "call", "residual")
OPS[node.op].emit(node)
node.folds and before.fold_role
tree.kind == "conv"
isinstance(expr, layout.Conv)
"""
    assert type_switches(snippet) == []


@pytest.mark.parametrize("stage", SCANNED)
def test_no_pass_tool_or_backend_switches_on_an_op(stage):
    found = []
    for path in sorted((ROOT / "archc" / stage).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found += type_switches(path.read_text(), rel)
    assert not found, "switches on an op outside its class and records (see docs/adding-an-op.md):\n" + "\n".join(found)
