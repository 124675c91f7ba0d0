"""Feature taps: where a detection or segmentation head would read the network's feature
maps, computed from the IR's shapes with no framework.

A tap is the last tensor at each reduction (timm's ``feature_info`` convention: the last
module whose output has that reduction of the input's height), with its channels and the
instance key of the module that outputs it. Modules are taken at the coarsest level
that tells the reductions apart: a top-level node is a tap candidate as a whole (a
DenseNet transition, BN-relu-conv-pool, is one module whose output is the next
reduction, so the tap before it is the dense block's output, as in timm), and its
children are looked into only where it spans more than one step of reduction (a flow
written as one call of all stages). Only the trunk is looked into: a child sequence
whose last output is not the node's output size (a squeeze-and-excite squeeze, 1x1)
is a side path, and a module that grows the map (a zero pad before a 'valid' pool) only
prepares the next window. The taps end at the first global pool or vector; they begin at the
first module with trainable weights (an input rescale or normalisation is no feature).

Reductions are the nearest power of two of input height / output height, so 'valid'
windows (Inception's 299 -> 8 is 37.4) and 'same' rounding (Xception's 299 -> 10) give
the nominal 32 that timm reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from archc.ir.ops import Node
from archc.passes.analysis import Analysis
from archc.passes.shapes import Shape


@dataclass(frozen=True)
class Tap:
    """The last feature map at one reduction of the input."""

    reduction: int
    module: str  # instance key of the module whose output it is
    shape: Shape  # (height, width, channels)

    @property
    def channels(self) -> int:
        return self.shape[2]

    def as_dict(self) -> dict:
        return {"reduction": self.reduction, "module": self.module, "shape": list(self.shape), "channels": self.channels}


def reduction(input_height: int, height: int) -> int:
    """The nominal reduction of a feature map of ``height`` rows from an input of ``input_height``."""
    return 2 ** max(0, round(math.log2(input_height / height)))


class _Walk:
    """The trunk's modules in execution order, as (key, output shape) candidates."""

    def __init__(self, analysis: Analysis):
        self.shapes = analysis.instance_shapes
        self.counts = analysis.counts
        self.height = analysis.net.input[0]
        self.candidates: list[tuple[str, Shape]] = []
        self.learning = False  # a module with trainable weights has run
        self.ended = False  # a global pool or a vector has been reached

    def level(self, shape: Shape) -> int:
        return reduction(self.height, shape[0])

    def sequence(self, nodes: list[Node], base: tuple[str, str]) -> None:
        for node in nodes:
            key = base[1] + node.path[len(base[0]) :]
            if self.ended or key not in self.shapes:
                continue
            inp, out = self.shapes[key]
            if node.pools_globally or len(out) != 3:
                self.ended = True
                return
            spans = len(inp) == 3 and self.level(out) > 2 * self.level(inp)
            if spans:
                for child_base, seq in self.trunk(node, key, out, base):
                    self.sequence(seq, child_base)
            self.learning = self.learning or self.counts[node.path].trainable > 0
            grows = len(inp) == 3 and (out[0] > inp[0] or out[1] > inp[1])  # a zero pad for the next window
            if self.learning and not self.ended and not grows:
                self.candidates.append((key, out))

    def trunk(self, node: Node, key: str, out: Shape, base: tuple[str, str]) -> list[tuple[tuple[str, str], list[Node]]]:
        """The node's child sequences (one per repeat index) whose last output has the node's size."""
        bases = [(node.path, f"{key}[{i}]") for i in range(node.repeats())] if node.indexed else [base]
        out_seqs = []
        for child_base in bases:
            for _, seq in node.running():
                keys = [child_base[1] + n.path[len(child_base[0]) :] for n in seq]
                last = [k for k in keys if k in self.shapes]
                if last and self.shapes[last[-1]][1][:2] == out[:2]:
                    out_seqs.append((child_base, seq))
        return out_seqs


def taps(analysis: Analysis) -> list[Tap]:
    """The network's feature taps, by increasing reduction."""
    walk = _Walk(analysis)
    for layers in analysis.net.flows.values():
        walk.sequence(layers, ("", ""))
    last: dict[int, tuple[str, Shape]] = {}
    for key, shape in walk.candidates:
        last[walk.level(shape)] = (key, shape)
    return [Tap(r, key, shape) for r, (key, shape) in sorted(last.items())]
