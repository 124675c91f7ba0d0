"""Which batch norms fold into the layer before them: decided from the IR, at compile time.

A batch norm in inference mode is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - moving_mean * s``. When
it directly follows a layer whose output channels are computed by a linear map (a conv,
a separable conv's pointwise conv, a dense layer), scaling that map's output channels by
``s`` and shifting its bias (added where it has none) by ``t`` gives the same outputs
without the batch norm.

A pair is a producer and the batch norm right after it in the same sequence, with
nothing between. Any boundary breaks a pair: the end of a residual body or branch, the
end of a block, a repeat, a node switched off in between, and a ``when`` condition on
only one of the two (a param could remove one and not the other). Two nodes under the
same condition (``when: $project`` on both) pair: they are there, or gone, together.
So the pairs hold for every param value of the generated module, which can carry them
as one table.

The producers are a table (:data:`PRODUCERS`): a new op whose output channels come from
a linear map is one entry there, and one in each backend's fold function.
"""

from __future__ import annotations

from dataclasses import dataclass

from .analysis import Analysis
from .ir import BN, Node, children

# op -> the neutral-format role whose last axis is the output channel that a BN scales
PRODUCERS: dict[str, str] = {
    "conv": "kernel",
    "sepconv": "pointwise",
    "dense": "kernel",
}


@dataclass(frozen=True)
class Fold:
    """A batch norm (``bn``, an IR path) that folds into ``producer`` (the IR path of the
    conv, separable conv or dense layer right before it)."""

    producer: str
    bn: str
    op: str  # the producer's op


def _same_condition(a: Node, b: Node) -> bool:
    """Both always there, or both under the same param or block argument."""
    return a.refs.get("when") == b.refs.get("when") and (a.when or "when" in a.refs) and (b.when or "when" in b.refs)


def folds(analysis: Analysis) -> list[Fold]:
    """Every (producer, batch norm) pair of the network, in the order of the IR."""
    out: list[Fold] = []

    def sequence(nodes: list[Node]) -> None:
        before = None
        for node in nodes:
            if isinstance(node, BN) and before is not None and before.op in PRODUCERS and _same_condition(before, node):
                out.append(Fold(before.path, node.path, before.op))
            for _, seq in children(node):
                sequence(seq)
            before = node

    for layers in analysis.net.flows.values():
        sequence(layers)
    return out


def folded_instances(analysis: Analysis) -> int:
    """How many batch norm instances fold with these params (a BN inside a repeat once
    per repeat index; a BN switched off by a param, e.g. in a dropped shortcut, not)."""
    from .instances import instances

    paths = {f.bn for f in folds(analysis)}
    return sum(1 for inst in instances(analysis) if inst.path in paths)


def batch_norms(analysis: Analysis) -> int:
    """How many batch norm instances the network runs with these params."""
    from .instances import instances

    return sum(1 for inst in instances(analysis) if isinstance(inst.node, BN))
