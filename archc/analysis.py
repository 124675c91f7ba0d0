"""Parameter and multiply-add counts, per node and per module, with no framework.

Multiply-adds count convolutions and dense layers (the conventional MACs); BN, pooling
and activations count none. Trainable: kernels, biases, BN gamma/beta; non-trainable:
BN moving mean and variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Location, SpecError
from .ir import BN, Call, Conv, Dense, Network, Node, Repeat, Residual, SepConv, children
from .shapes import Shape, Shapes, infer, output_shape


@dataclass(frozen=True)
class Counts:
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.trainable + other.trainable, self.non_trainable + other.non_trainable, self.macs + other.macs)

    def __mul__(self, times: int) -> Counts:
        return Counts(self.trainable * times, self.non_trainable * times, self.macs * times)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class Row:
    """One line of the parameter table: a top-level node of a flow."""

    flow: str
    name: str
    kind: str
    repeat: int
    output: Shape
    counts: Counts


@dataclass
class Analysis:
    """The annotated network every backend reads: IR + shapes + counts."""

    net: Network
    shapes: Shapes
    counts: dict[str, Counts]
    rows: list[Row] = field(default_factory=list)
    total: Counts = Counts()
    output: Shape = ()

    def as_dict(self) -> dict:
        return {
            "name": self.net.name,
            "file": self.net.file,
            "params": self.net.params,
            "input": list(self.net.input),
            "output": list(self.output),
            "trainable": self.total.trainable,
            "non_trainable": self.total.non_trainable,
            "total": self.total.total,
            "macs": self.total.macs,
            "modules": [
                {
                    "flow": r.flow,
                    "name": r.name,
                    "kind": r.kind,
                    "repeat": r.repeat,
                    "output": list(r.output),
                    "trainable": r.counts.trainable,
                    "non_trainable": r.counts.non_trainable,
                    "macs": r.counts.macs,
                }
                for r in self.rows
            ],
        }


MAX_LAYERS = 1_000_000


def analyse(net: Network) -> Analysis:
    _layer_count([n for layers in net.flows.values() for n in layers])
    shapes = infer(net)
    counts: dict[str, Counts] = {}
    result = Analysis(net, shapes, counts, output=output_shape(net, shapes))
    total = Counts()
    for flow, layers in net.flows.items():
        for node in layers:
            if not node.when:
                continue
            c = _count(node, shapes, counts)
            total += c
            kind = node.block if isinstance(node, Call) else node.op
            repeat = node.times if isinstance(node, Repeat) else 1
            result.rows.append(Row(flow, node.name, kind, repeat, shapes[node.path][1], c))
    result.total = total
    return result


def _count(node: Node, shapes: Shapes, counts: dict[str, Counts]) -> Counts:
    inp, out = shapes[node.path]
    c = Counts()
    if isinstance(node, Conv):
        per_out = node.kernel[0] * node.kernel[1] * (inp[2] // node.groups)
        c = Counts(per_out * node.filters + (node.filters if node.bias else 0), 0, out[0] * out[1] * node.filters * per_out)
    elif isinstance(node, SepConv):
        cin, mid = inp[2], inp[2] * node.depth_multiplier
        segments = cin if node.segments == "depthwise" else node.segments
        spatial = node.kernel[0] * node.kernel[1] * (cin // segments) * mid
        pointwise = mid * node.filters
        c = Counts(spatial + pointwise + (node.filters if node.bias else 0), 0, out[0] * out[1] * (spatial + pointwise))
    elif isinstance(node, BN):
        ch = inp[-1]
        c = Counts(ch * (int(node.center) + int(node.scale)), 2 * ch, 0)
    elif isinstance(node, Dense):
        c = Counts(inp[0] * node.units + (node.units if node.bias else 0), 0, inp[0] * node.units)
    else:
        for label, seq in children(node):
            if isinstance(node, Residual) and label == "shortcut" and not node.use_shortcut:
                continue
            for child in seq:
                if child.when:
                    c += _count(child, shapes, counts)
        if isinstance(node, Repeat):
            c = c * node.times
    counts[node.path] = c
    return c


def _layer_count(layers: list[Node]) -> int:
    """Layers once repeats are expanded; a network that would build more than
    MAX_LAYERS modules is refused here, before any backend tries to build it."""
    total = 0
    for node in layers:
        if not node.when:
            continue
        inner = sum(_layer_count(seq) for _, seq in children(node))
        count = 1 + (node.times * inner if isinstance(node, Repeat) else inner)
        if count > MAX_LAYERS:
            w = node.where
            raise SpecError(
                Location(w.file, w.line, w.col, w.spec_path),
                f"expected at most {MAX_LAYERS:,} layers once repeats are expanded, found {count:,}",
            )
        total += count
    return total
