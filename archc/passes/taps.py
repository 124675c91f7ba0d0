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

The same walk splits the network where a backbone API needs it (:func:`backbone`): the
*features* are the modules it runs up to the first global pool or vector, the *head*
that node and every layer after it (timm's ``forward_head``, what keras.applications'
``include_top=False`` leaves out). A graph's encoder ends, and so do its taps, at the first
layer that reads named tensors (a decoder or a pyramid merging earlier maps) or that
brings the map back to a finer reduction (an upsample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from archc.ir.ops import Node
from archc.passes.analysis import Analysis
from archc.passes.shapes import Shape


@dataclass(frozen=True)
class Tap:
    """The last feature map at one reduction of the input."""

    reduction: int
    module: str  # instance key of the module whose output it is
    shape: Shape  # (height, width, channels)
    node: Node | None = field(default=None, compare=False, repr=False)  # the module's IR node

    @property
    def channels(self) -> int:
        return self.shape[2]

    def as_dict(self) -> dict:
        return {"reduction": self.reduction, "module": self.module, "shape": list(self.shape), "channels": self.channels}


def reduction(input_height: int, height: int) -> int:
    """The nominal reduction of a feature map of ``height`` rows from an input of ``input_height``."""
    return 2 ** max(0, round(math.log2(input_height / height)))


@dataclass(frozen=True)
class Backbone:
    """The network as a backbone: its taps, and the modules (instance keys, in the order
    they run) of its features and of its head. ``steps`` is None where the features are
    not one chain of modules (the walk looked into a combinator's paths); ``head`` is
    None where no global pool or vector ends them (a segmentation or pyramid graph);
    ``classifier`` is the head's last module with trainable weights."""

    taps: list[Tap]
    steps: list[tuple[str, Node]] | None
    head: list[tuple[str, Node]] | None
    classifier: str | None


class _Walk:
    """The trunk's modules in execution order, as (key, output shape) candidates."""

    def __init__(self, analysis: Analysis):
        self.shapes = analysis.instance_shapes
        self.counts = analysis.counts
        self.height = analysis.net.input[0]
        self.candidates: list[tuple[str, Shape, Node]] = []
        self.steps: list[tuple[str, Node]] = []  # the modules the features run, in order
        self.head: list[tuple[str, Node]] | None = None  # from the global pool on
        self.chain = True  # every module the walk looked into runs its one trunk in order
        self.learning = False  # a module with trainable weights has run
        self.ended = False  # a global pool, a vector, or the end of a graph's encoder
        self.saved: dict[str, tuple[int, int]] = {}  # a trunk tensor's name -> (steps, candidates) then
        self.layer_reads = _layer_reads(analysis.net.flows.values())

    def level(self, shape: Shape) -> int:
        return reduction(self.height, shape[0])

    def sequence(self, nodes: list[Node], base: tuple[str, str]) -> None:
        for node in nodes:
            key = base[1] + node.path[len(base[0]) :]
            if self.ended:
                if self.head is not None and node.in_code():
                    self.head.append((key, node))
                continue
            if key not in self.shapes:  # switched off by a param: the code has it, as a no-op
                self.steps += [(key, node)] if node.in_code() else []
                continue
            inp, out = self.shapes[key]
            if (node.pools_globally or len(out) != 3) and node.saves and not set(node.saves) & self.layer_reads:
                continue  # a side output (Inception's auxiliary head), not the head
            if node.pools_globally or len(out) != 3:
                self.ended, self.head = True, [(key, node)]
                continue
            if node.reads and not self.back_to(node.reads):
                self.ended = True  # a decoder or a pyramid: the encoder ends, no head
                continue
            if len(inp) == 3 and self.level(out) < self.level(inp):
                self.ended = True  # an upsample: the same
                continue
            self.module(node, key, inp, out, base)
            for name in node.saves:
                self.saved[name] = (len(self.steps), len(self.candidates))

    def back_to(self, reads: tuple[str, ...]) -> bool:
        """Whether a layer that reads ``reads`` goes on with the trunk: it reads one tensor
        a module of the trunk made, and every module since then is a side output (Inception's
        auxiliary head: its output named, and no layer reads it), which it leaves out."""
        if len(reads) != 1 or reads[0] not in self.saved:
            return False
        steps, candidates = self.saved[reads[0]]
        side = self.steps[steps:]
        if not all(node.saves and not set(node.saves) & self.layer_reads for _, node in side):
            return False
        del self.steps[steps:], self.candidates[candidates:]
        return True

    def module(self, node: Node, key: str, inp: Shape, out: Shape, base: tuple[str, str]) -> None:
        """One module of the trunk: a step of the features, or the steps inside it where
        it spans more than one step of reduction."""
        spans = len(inp) == 3 and self.level(out) > 2 * self.level(inp)
        trunk = self.trunk(node, key, out, base) if spans else []
        if trunk:
            # only a block's body or a repeat's runs are a chain the features can run piecewise
            self.chain = self.chain and (node.closed or node.indexed) and len(trunk) == len(node.running()) * node.repeats()
            for child_base, seq in trunk:
                self.sequence(seq, child_base)
        else:
            self.steps.append((key, node))
        self.learning = self.learning or self.counts[node.path].trainable > 0
        grows = len(inp) == 3 and (out[0] > inp[0] or out[1] > inp[1])  # a zero pad for the next window
        if self.learning and not self.ended and not grows:
            self.candidates.append((key, out, node))

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


def _layer_reads(sequences) -> set[str]:
    """The named tensors some layer reads (not only an output)."""
    found: set[str] = set()
    for seq in sequences:
        for node in seq:
            found |= set(node.reads) | _layer_reads(nodes for _, nodes in node.children())
    return found


def backbone(analysis: Analysis) -> Backbone:
    """The network's taps, by increasing reduction, and its split into features and head."""
    walk = _Walk(analysis)
    for layers in analysis.net.flows.values():
        walk.sequence(layers, ("", ""))
    last: dict[int, tuple[str, Shape, Node]] = {}
    for key, shape, node in walk.candidates:
        last[walk.level(shape)] = (key, shape, node)
    found = [Tap(r, key, shape, node) for r, (key, shape, node) in sorted(last.items())]
    weighted = [key for key, node in walk.head or [] if node.path in analysis.counts and analysis.counts[node.path].trainable > 0]
    return Backbone(found, walk.steps if walk.chain else None, walk.head, weighted[-1] if weighted else None)


def taps(analysis: Analysis) -> list[Tap]:
    """The network's feature taps, by increasing reduction."""
    return backbone(analysis).taps
