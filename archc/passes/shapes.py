"""Shape inference: every enabled node's input and output shape, or a located error
for a network that could not run (mismatched residuals or branches, segments that do
not divide channels, valid windows larger than their input, ...). Each op's own rule is
its ``infer`` method (archc.ir.ops); this module only walks the tree.

Shapes are recorded per instance (a node inside a repeat runs once per index, and a
body that grows the channels sees a different input each time), keyed as
:mod:`archc.passes.instances` keys them, and per IR path (the first instance)."""

from __future__ import annotations

from archc.ir.ops import Network, Node, Shape, fmt

Shapes = dict[str, tuple[Shape, Shape]]

__all__ = ["Shapes", "fmt", "infer", "infer_instances", "output_shape"]


def infer(net: Network) -> Shapes:
    """path -> (input shape, output shape) for every enabled node (its first instance)."""
    return infer_instances(net)[0]


def infer_instances(net: Network) -> tuple[Shapes, Shapes]:
    """(by IR path, by instance key) -> (input shape, output shape), in network order."""
    by_path: Shapes = {}
    by_key: Shapes = {}

    def sequence(layers: list[Node], shape: Shape, base: tuple[str, str]) -> Shape:
        for node in layers:
            if not node.when:
                continue
            key = base[1] + node.path[len(base[0]) :]

            def run(seq: list[Node], inp: Shape, index: int | None = None, node=node, key=key) -> Shape:
                return sequence(seq, inp, base if index is None else (node.path, f"{key}[{index}]"))

            out = node.infer(shape, run)
            by_key[key] = (shape, out)
            by_path.setdefault(node.path, (shape, out))
            shape = out
        return shape

    shape: Shape = tuple(net.input)
    for layers in net.flows.values():
        shape = sequence(layers, shape, ("", ""))
    return by_path, by_key


def output_shape(net: Network, shapes: Shapes) -> Shape:
    last = [node for layers in net.flows.values() for node in layers if node.when]
    return shapes[last[-1].path][1] if last else tuple(net.input)
