"""Parameter and multiply-add counts, per node and per module, with no framework.

Multiply-adds count convolutions and dense layers (the conventional MACs); BN, pooling
and activations count none. Trainable: kernels, biases, BN gamma/beta; non-trainable:
BN moving mean and variance. Each op says which weights it has (``roles``) and its
multiply-adds (``macs``); the counts are summed over every instance, so a repeat whose
body grows the channels counts each run with its own input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from archc.ir.ops import Network, Node, children
from archc.passes.shapes import INPUT, Graph, Shape, Shapes, infer_graph
from archc.syntax.errors import Location, SpecError


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
    counts: dict[str, Counts]  # IR path -> counts of its first instance (children included)
    rows: list[Row] = field(default_factory=list)
    total: Counts = Counts()
    output: Shape = ()  # the first output's shape
    instance_shapes: Shapes = field(default_factory=dict)  # instance key -> shapes
    outputs: dict[str, Shape] = field(default_factory=dict)  # output name -> shape, in the spec's order
    output_counts: dict[str, Counts] = field(default_factory=dict)  # output name -> counts of what it depends on

    def as_dict(self) -> dict:
        return {
            "name": self.net.name,
            "file": self.net.file,
            "params": self.net.params,
            "input": list(self.net.input),
            "output": list(self.output),
            "outputs": {
                name: {"shape": list(shape), "trainable": c.trainable, "non_trainable": c.non_trainable, "macs": c.macs}
                for (name, shape), c in zip(self.outputs.items(), self.output_counts.values())
            },
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
    graph = infer_graph(net)
    shapes, at = graph.by_path, graph.by_key
    counts: dict[str, Counts] = {}
    outputs = {name: tensor.shape for name, tensor in graph.outputs.items()}
    result = Analysis(net, shapes, counts, output=next(iter(outputs.values())), instance_shapes=at, outputs=outputs)
    result.output_counts = _per_output(graph)
    total = Counts()
    for flow, layers in net.flows.items():
        for node in layers:
            if not node.when or node.path not in at:
                continue
            c = _count(node, node.path, ("", ""), at, counts)
            total += c
            result.rows.append(Row(flow, node.name, node.label(), node.repeats(), shapes[node.path][1], c))
    result.total = total
    return result


def own_counts(node: Node, inp: Shape, out: Shape) -> Counts:
    """One run of ``node`` alone (not its children): its weights and multiply-adds."""
    trainable = non_trainable = 0
    for role, shape in node.roles(inp).items():
        if role in node.frozen_roles:
            non_trainable += math.prod(shape)
        else:
            trainable += math.prod(shape)
    return Counts(trainable, non_trainable, node.macs(inp, out))


def _per_output(graph: Graph) -> dict[str, Counts]:
    """The counts of the instances each output depends on; a located error for a layer
    that no output depends on (its output read by nothing: a silent mistake otherwise,
    and Keras would leave it out of the model)."""
    per: dict[str, Counts] = {}
    needed: set[str] = set()
    for name, tensor in graph.outputs.items():
        seen: set[str] = set()
        todo = [tensor.source]
        while todo:
            key = todo.pop()
            if key in seen or key == INPUT:
                continue
            seen.add(key)
            todo.extend(graph.reads[key])
        per[name] = sum((own_counts(graph.nodes[k], *graph.by_key[k]) for k in seen), Counts())
        needed |= seen
    # a block with several outputs and a repeat pass tensors on by name (its outputs, the
    # names an iteration gives again), not only as their output: needed where a layer inside is
    inside = {key[:i] for key in needed for i, ch in enumerate(key) if ch in "/["}
    for key, node in graph.nodes.items():
        if key not in needed and not (key in inside and (node.results() or node.indexed)):
            raise node.fail(
                "expected every layer to lead to an output, found this one's output read by no later layer "
                "(name it with as: and read it with from:, or list it in outputs:)"
            )
    return per


def _count(node: Node, key: str, base: tuple[str, str], at: Shapes, counts: dict[str, Counts]) -> Counts:
    """Counts of the instance ``key`` of ``node``, its running children included."""
    inp, out = at[key]
    c = own_counts(node, inp, out)
    for index in range(node.repeats()):
        inner = (node.path, f"{key}[{index}]") if node.indexed else base
        for _, seq in node.running():
            for child in seq:
                child_key = inner[1] + child.path[len(inner[0]) :]
                if child.when and child_key in at:  # not there: switched off here by a when: over tensor sizes
                    c += _count(child, child_key, inner, at, counts)
    counts.setdefault(node.path, c)
    return c


def _layer_count(layers: list[Node]) -> int:
    """Layers once repeats are expanded; a network that would build more than
    MAX_LAYERS modules is refused here, before any backend tries to build it."""
    total = 0
    for node in layers:
        if not node.when:
            continue
        inner = sum(_layer_count(seq) for _, seq in children(node))
        count = 1 + node.repeats() * inner
        if count > MAX_LAYERS:
            w = node.where
            raise SpecError(
                Location(w.file, w.line, w.col, w.spec_path),
                f"expected at most {MAX_LAYERS:,} layers once repeats are expanded, found {count:,}",
            )
        total += count
    return total
