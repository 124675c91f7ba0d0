"""Where each layer of the generated torch code lives: the naming rule, in one place, that
the renderer lays attributes out by and :func:`qualified_names` (weights, folds, swaps,
hooks) finds them by. It reads only the IR's structure, never channels or values.

The rule, which keeps ``state_dict`` keys no deeper than the spec's own nesting:

- A *scope* holds layers as attributes: the model, each block class (``self``), a flow
  or a repeat's run that is not a plain chain (an ``nn.ModuleDict``).
- A layer (an op, a block call, a repeat) is one attribute of its scope, named by its
  identifier in the spec. A residual, branches, a gate and a merge (add, concat,
  multiply; resize, crop) are no module: their layers
  are attributes of the same scope, those of a shortcut, a branch path or a gate's
  body prefixed with its label (``shortcut_conv1``, ``b3x3_unit1``, ``se_reduce``), and
  their data flow is statements in ``forward`` (:mod:`.statements`).
- A flow, and each run of a repeat, is held by one module: the layer itself where it
  is one, an ``nn.Sequential`` of its layers where they form a chain, else an
  ``nn.ModuleDict`` scope whose statements the enclosing ``forward`` runs (in a ``for``
  over the runs of a repeat). A repeat is ``nn.Sequential`` of its runs (or an
  ``nn.ModuleList`` of ``nn.ModuleDict`` scopes), so a run is ``<repeat>.<index>``.

So Xception's ``middle.3.sep_bn1.sepconv1.pointwise.weight`` is flow ``middle`` (a
repeat), run 3 (a ``Middle``), its ``sep_bn1`` (the residual's body is ``Middle``'s own
layers), that block's separable conv.
"""

from __future__ import annotations

from archc.codegen.naming import Namespace
from archc.codegen.plan import Plan
from archc.ir.ops import Node
from archc.passes.fold import takes_pad

from .ops import OPS, RESERVED

# Attribute names a module's own code uses besides nn.Module's (RESERVED has those).
TAKEN = RESERVED | {"forward", "training"}


def live(nodes: list[Node]) -> list[Node]:
    """The nodes that the generated code has as layers: not removed by a literal ``when:
    false``, nor a zero padding that the conv after it takes as its own ``padding=``."""
    return [n for before, n, after in zip([None, *nodes], nodes, [*nodes[1:], None]) if n.in_code() and not takes_pad(n, after, before)]


def live_children(node: Node) -> list[tuple[str, list[Node]]]:
    """A node's child sequences in the code: a shortcut that a literal
    ``use_shortcut: false`` removes is not."""
    return [
        (label, seq)
        for label, seq in node.children()
        if not (label == "shortcut" and not (node.use_shortcut or "use_shortcut" in node.refs))
    ]


def is_module(node: Node) -> bool:
    """Whether the node is one module that ``forward`` calls on its input, in a chain: an
    op, a block call, a repeat whose runs are modules (not a residual, branches, a gate or
    a merge, nor a layer that reads or names tensors: those are statements)."""
    return alone(node) and not node.reads and not node.saves


def alone(node: Node) -> bool:
    """Whether the node is one module called on one tensor: :func:`is_module` but for the
    names it reads or gives (the backbone's walk knows which tensor that is)."""
    record = OPS[node.op]
    if record.prefix is not None:
        return False
    return not record.runs or holder(node.children()[0][1]) != "scope"


def holder(nodes: list[Node]) -> str:
    """How one module holds a sequence: 'empty', 'single' (its one layer), 'chain' (an
    ``nn.Sequential``), or 'scope' (an ``nn.ModuleDict`` and statements)."""
    nodes = live(nodes)
    if not nodes:
        return "empty"
    if not all(is_module(node) for node in nodes):
        return "scope"
    return "single" if len(nodes) == 1 else "chain"


def scope_names(plan: Plan, nodes: list[Node], space: Namespace | None = None) -> list[tuple[Node, str]]:
    """(node, attribute) for each module that ``nodes``, laid out in one scope, put in it,
    in order; ``space``: the scope's namespace (kept, for names added later)."""
    space = space if space is not None else Namespace(TAKEN, attribute=True)
    out: list[tuple[Node, str]] = []

    def visit(seq: list[Node], prefix: str) -> None:
        for node in live(seq):
            record = OPS[node.op]
            if record.prefix is None:
                out.append((node, space.create(prefix + plan.ident[node.path])))
                continue
            for label, children in live_children(node):
                visit(children, prefix + record.prefix(plan, node, label))

    visit(nodes, "")
    return out


def qualified_names(plan: Plan) -> dict[str, str]:
    """IR path -> qualified name of its module in a model built by the generated file.

    ``{0}``, ``{1}`` ... stand for the indices of the enclosing repeats, outermost first
    (``middle.{0}.sep_bn1``). Residuals, branches and gates have no module; nodes
    removed by a literal ``when: false`` (or ``use_shortcut: false``) neither; those
    switched off through a param are ``nn.Identity`` (inside a combinator, None)."""
    names: dict[str, str] = {}

    def module(node: Node, name: str, depth: int) -> None:
        names[node.path] = name
        record = OPS[node.op]
        if record.runs:
            held(node.children()[0][1], f"{name}.{{{depth}}}", depth + 1)
        elif record.nested:
            inline(node.children()[0][1], f"{name}.", depth)

    def inline(nodes: list[Node], prefix: str, depth: int) -> None:
        for node, attribute in scope_names(plan, nodes):
            module(node, prefix + attribute, depth)

    def held(nodes: list[Node], name: str, depth: int) -> None:
        kind = holder(nodes)
        if kind == "single":
            module(live(nodes)[0], name, depth)
        elif kind != "empty":
            inline(nodes, f"{name}.", depth)

    for flow, nodes in plan.analysis.net.flows.items():
        held(nodes, plan.ident[flow], 0)
    return names
