"""Which batch norms fold into the layer before them: decided from the IR, at compile time.

A batch norm in inference mode is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - moving_mean * s``. When
it directly follows a layer whose output channels are computed by a linear map (a conv,
a depthwise conv, a separable conv's pointwise conv, a dense layer), scaling that map's
output channels by ``s`` and shifting its bias (added where it has none) by ``t`` gives
the same outputs without the batch norm.

A pair is a producer and the batch norm right after it in the same sequence, with
nothing between, reading its output, which has no name (``as:``) that another layer
could read. Any boundary breaks a pair: the end of a residual body or branch, the
end of a block, a repeat, a node switched off in between, and a ``when`` condition on
only one of the two (a param could remove one and not the other). Two nodes under the
same condition (``when: $project`` on both) pair: they are there, or gone, together.
So the pairs hold for every param value of the generated module, which can carry them
as one table.

The producers are the ops with a ``fold_role`` (archc.ir.ops: the role whose output
channels the batch norm scales): a new op whose output channels come from a linear map
sets it, and gives a fold target in each backend's record of it.

The same walk finds the second inference rewrite, :func:`swaps`: an average pool right
before a 1x1 conv runs after it instead. Both are linear per pixel, and the pool's
weights over a window sum to one (padded cells are not counted), so
``conv(pool(x)) == pool(conv(x))``, bias included; with stride 1 the conv does the same
work either way, and the pool then averages the conv's fewer output channels (Inception's
pool branches: 192 -> 32 ... 2048 -> 192 channels).

A third rule is no inference rewrite but how a backend may render a pair, :func:`takes_pad`:
a zero padding equal on both sides of each axis, right before a 'valid' conv that reads
only it (or a max pool, where a relu feeds the padding), is the conv's own padding (torch's ``padding=``: the same numbers without a
padded copy of the map, which costs a fill and a copy, and their backward, and makes
oneDNN's dilated convs slower). Keras keeps its ZeroPadding2D.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc.ir.ops import Call, Node, children
from archc.passes.analysis import Analysis

# What every generated module defines to apply the tables (templates/fold.py.j2 of each
# backend): no name made from a spec may take one of these.
MODULE_NAMES = ("BN_FOLDS", "POOL_SWAPS", "fold_batchnorm", "swap_pools", "for_inference", "_expand", "_swap_is_exact")


@dataclass(frozen=True)
class Fold:
    """A batch norm (``bn``, an IR path) that folds into ``producer`` (the IR path of the
    conv, separable conv or dense layer right before it)."""

    producer: str
    bn: str
    op: str  # the producer's op


@dataclass(frozen=True)
class Swap:
    """An average pool (``pool``, an IR path) and the 1x1 conv (``conv``) that runs right
    after it, as the first layer of the next node or of the block it calls."""

    pool: str
    conv: str


def _same_condition(a: Node, b: Node) -> bool:
    """Both always there, or both under the same param or block argument."""
    return a.refs.get("when") == b.refs.get("when") and a.in_code() and b.in_code()


def _feeds(a: Node, b: Node) -> bool:
    """``b`` reads ``a``'s output and nothing else does: ``b`` reads no named tensor, and
    ``a``'s output has no name (a later layer could read it before the rewrite)."""
    return not b.reads and not a.saves


def folds(analysis: Analysis) -> list[Fold]:
    """Every (producer, batch norm) pair of the network, in the order of the IR."""
    out: list[Fold] = []

    def sequence(nodes: list[Node]) -> None:
        before = None
        for node in nodes:
            if node.folds and before is not None and before.fold_role and _same_condition(before, node) and _feeds(before, node):
                out.append(Fold(before.path, node.path, before.op))
            for _, seq in children(node) if node.in_code() else ():
                sequence(seq)
            before = node

    for layers in analysis.net.flows.values():
        sequence(layers)
    return out


def _first_layer(node: Node) -> Node:
    """The layer that runs first in ``node``: itself, or the first of a called block's
    body when that one is always there."""
    while isinstance(node, Call) and node.body[0].when is True and "when" not in node.body[0].refs:
        node = node.body[0]
    return node


def _may_swap(pool: Node, after: Node) -> bool:
    """Both under the same condition, or the pool under one of its own before a layer that
    is always there: a pool a param switches off is no pool in the built model (torch's
    nn.Identity, no Keras layer), which the generated swap_pools leaves alone (it checks
    each pair on the built model). Inception's pool branches pick one of two pools by a
    param, each before the same 1x1 conv."""
    return _same_condition(pool, after) or (pool.in_code() and after.when is True and "when" not in after.refs)


def takes_pad(pad: Node, after: Node | None, before: Node | None = None) -> bool:
    """Whether ``after``, the node right after ``pad`` in its sequence, pads its own input
    by ``pad``'s margins instead of ``pad`` (which then is no layer): a symmetric zero
    padding (the ops say: ``pads``, ``symmetric``) and a layer that ``takes_padding`` (a
    max pool only after a relu: ``before``, the node before the pad), under the same
    condition or the padding under one of its own before a layer always there (the
    layer's padding is then conditional), nothing else reading the padded map."""
    if not (pad.pads and after is not None and pad.symmetric() and _may_swap(pad, after) and _feeds(pad, after)):
        return False
    return after.takes_padding(pad, before)


def swaps(analysis: Analysis) -> list[Swap]:
    """Every average pool of stride 1 that feeds a 1x1, stride-1 conv with fewer output
    than input channels (at the spec's params), in the order of the IR (the ops say
    which they are: ``swaps_before_pointwise``, ``pointwise``)."""
    out: list[Swap] = []

    def sequence(nodes: list[Node]) -> None:
        for node, after in zip(nodes, [*nodes[1:], None]):
            conv = _first_layer(after) if after is not None else None
            if (
                node.swaps_before_pointwise()
                and after is not None
                and _may_swap(node, after)
                and _feeds(node, after)
                and not conv.reads
                and conv.pointwise()
                and analysis.shapes[conv.path][1][-1] < analysis.shapes[conv.path][0][-1]
            ):
                out.append(Swap(node.path, conv.path))
            for _, seq in children(node) if node.in_code() else ():
                sequence(seq)

    for layers in analysis.net.flows.values():
        sequence(layers)
    return out


def _instances_at(analysis: Analysis, paths: set[str]) -> int:
    """How many instances of the nodes at ``paths`` run with these params (a node inside
    a repeat once per repeat index; a node switched off by a param not)."""
    from archc.passes.instances import instances

    return sum(1 for inst in instances(analysis) if inst.path in paths)


def folded_instances(analysis: Analysis) -> int:
    """How many batch norm instances fold with these params."""
    return _instances_at(analysis, {f.bn for f in folds(analysis)})


def swapped_instances(analysis: Analysis) -> int:
    """How many average pool instances move after their conv with these params."""
    return _instances_at(analysis, {s.pool for s in swaps(analysis)})


# The generated modules carry the fold and swap tables with a repeat's index as {0}
# ({1} ... for nested repeats); this function, copied into each of them as it stands
# here (codegen.helper_source), finds the layers a table entry stands for.
def _expand(template, names, indices=()):
    """(name, repeat indices) for each of ``names`` that ``template`` stands for: {0},
    {1} ... are the indices of the enclosing repeats, each counting from 0."""
    mark = "{" + str(len(indices)) + "}"
    if mark not in template:
        name = template.format(*indices)
        return [(name, indices)] if name in names else []
    prefix, found, i = template.split(mark)[0].format(*indices), [], 0
    while any(name.startswith(f"{prefix}{i}") for name in names):
        found += _expand(template, names, (*indices, i))
        i += 1
    return found


def batch_norms(analysis: Analysis) -> int:
    """How many batch norm instances the network runs with these params."""
    from archc.passes.instances import instances

    return sum(1 for inst in instances(analysis) if inst.node.folds)
