"""Node instances and the framework-neutral weight format, decided once for every backend.

A node inside a repeat runs once per repeat index, each time with its own weights: an
*instance* is one such run. Its key is the IR path with the index of every enclosing
repeat written after that repeat's own segment::

    entry/down1/residual1/body/sep_bn1/sepconv1
    middle/repeat[3]/middle1/residual1/body/sep_bn1/sepconv1

The neutral weight format is ``{instance key: {role: array}}`` for every enabled
instance of an op with weights (its ``roles``, archc/ir/ops.py), in the IR's layout (which
is Keras's):

===========  ==========================================================================
op           roles and shapes
===========  ==========================================================================
conv         ``kernel`` (kh, kw, cin / groups, filters); ``bias`` (filters) if it has one
sepconv      ``spatial``: depthwise (kh, kw, C, depth_multiplier), or with integer
             segments s a grouped kernel (kh, kw, C / s, C * depth_multiplier);
             ``pointwise`` (1, 1, C * depth_multiplier, filters); ``bias`` (filters)
bn           ``gamma`` if scale, ``beta`` if center; ``moving_mean``, ``moving_variance``
dense        ``kernel`` (in, units); ``bias`` (units) if it has one
depthwise    ``kernel`` (kh, kw, C, depth_multiplier); ``bias`` (C * depth_multiplier)
channel_...  (channel_dense) ``kernel`` (C, units); ``bias`` (units)
layer_norm   ``gamma`` if scale, ``beta`` if center (C)
layer_scale  ``gamma`` (C)
normalize    without given values: ``mean``, ``variance`` (C), ``count`` () (non-trainable)
===========  ==========================================================================

A node inside a repeat whose body grows the channels has instances of different
shapes: each instance's input and output are its own (``Analysis.instance_shapes``).

Nothing here imports a framework (or numpy): shapes and keys only.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc.ir.ops import Node
from archc.passes.analysis import Analysis, Counts, own_counts
from archc.passes.shapes import Shape


@dataclass(frozen=True)
class Instance:
    """One run of an enabled node: ``key`` is its path with repeat indices."""

    key: str
    path: str
    indices: tuple[int, ...]  # of the enclosing repeats, outermost first
    node: Node
    module: str  # the path of the top-level node (a row of the parameter table) it belongs to
    input: Shape
    output: Shape

    @property
    def weighted(self) -> bool:
        return bool(self.node.roles(self.input))


def instances(analysis: Analysis) -> list[Instance]:
    """Every enabled node instance in execution order: a sequence in order, a node's
    children before the node (a residual's body, then its shortcut, then the residual;
    branches in order, then their concatenation), repeats unrolled."""
    out: list[Instance] = []
    shapes = analysis.instance_shapes

    def visit(nodes: list[Node], indices: tuple[int, ...], base: tuple[str, str], module: str | None) -> None:
        for node in nodes:
            key = base[1] + node.path[len(base[0]) :]
            if key not in shapes:  # switched off (when: false, a dropped shortcut)
                continue
            top = module or node.path
            if node.indexed:
                for i in range(node.repeats()):
                    for _, seq in node.children():
                        visit(seq, (*indices, i), (node.path, f"{key}[{i}]"), top)
            else:
                for _, seq in node.children():
                    visit(seq, indices, base, top)
            inp, outp = shapes[key]
            out.append(Instance(key, node.path, indices, node, top, inp, outp))

    for layers in analysis.net.flows.values():
        visit(layers, (), ("", ""), None)
    return out


def weighted(analysis: Analysis) -> list[Instance]:
    """The instances that hold weights (conv, sepconv, bn, dense), in execution order."""
    return [i for i in instances(analysis) if i.weighted]


def modules(analysis: Analysis) -> list[str]:
    """The paths of the top-level nodes, in the order of ``analysis.rows``."""
    return [node.path for layers in analysis.net.flows.values() for node in layers if node.path in analysis.shapes]


def roles(instance: Instance) -> dict[str, tuple[int, ...]]:
    """role -> shape of the instance's arrays in the neutral format (empty: no weights)."""
    return instance.node.roles(instance.input)


def counts(instance: Instance) -> Counts:
    """(trainable, non-trainable) of one instance, from its roles (agrees with
    ``analysis.counts[path]`` for a node's first instance)."""
    c = own_counts(instance.node, instance.input, instance.output)
    return Counts(c.trainable, c.non_trainable)
