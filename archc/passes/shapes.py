"""Shape inference: every enabled node's input and output shape, or a located error
for a network that could not run (mismatched residuals or branches, segments that do
not divide channels, valid windows larger than their input, a tensor name read before
it is defined, ...). Each op's own rule is its ``infer`` method (a merge op's is
``merge``; archc.ir.ops); this module only walks the tree and keeps the names.

Named tensors: a layer's ``as:`` names its output, a later layer's ``from:`` reads
names instead of the previous output. A flow sees the network's inputs and the names
of the flows before it; a nested sequence (a residual's body, a branch, a repeat's
iteration) sees the names around it, and its own names stay inside it; a block's body
sees only its tensor inputs and its own names. A name is defined once (or again by a
layer that reads it: ``from: [x, p], as: [x, p]``, which a repeat's next iteration then
reads), so the graph has no cycle by construction. A block may return several named
tensors, a split makes several, and a ``when:`` over tensor sizes is decided here, per
instance.

Shapes are recorded per instance (a node inside a repeat runs once per index, and a
body that grows the channels sees a different input each time), keyed as
:mod:`archc.passes.instances` keys them, and per IR path (the first instance). The
walk also records which tensors each instance reads (``Graph.reads``), from which the
analysis finds what each output depends on."""

from __future__ import annotations

from dataclasses import dataclass, field

from archc.ir.ops import Network, Node, Shape, Where, fmt, walk
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError, did_you_mean

Shapes = dict[str, tuple[Shape, Shape]]
INPUT = "input"  # the name of the network's input tensor, and the source of what it feeds

__all__ = ["INPUT", "Graph", "Shapes", "Tensor", "fmt", "infer", "infer_graph", "infer_instances", "output_shape"]


@dataclass(frozen=True)
class Tensor:
    shape: Shape
    source: str  # the instance key of the node that made it (INPUT: the network's input)


@dataclass
class Graph:
    """What the walk found: shapes by IR path and by instance key, the tensors each
    instance reads (by source), and the network's outputs by name."""

    by_path: Shapes = field(default_factory=dict)
    by_key: Shapes = field(default_factory=dict)
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)  # instance key -> node


def infer(net: Network) -> Shapes:
    """path -> (input shape, output shape) for every enabled node (its first instance)."""
    return infer_instances(net)[0]


def infer_instances(net: Network) -> tuple[Shapes, Shapes]:
    """(by IR path, by instance key) -> (input shape, output shape), in network order."""
    graph = infer_graph(net)
    return graph.by_path, graph.by_key


def infer_graph(net: Network) -> Graph:
    return _Walk(net).network()


class _Run:
    """What ``Node.infer`` gets: ``run(seq, shape[, i])`` infers a sub-sequence (from the
    node's input, or iteration i of a repeat from the previous one's output), and
    ``run.tensor(name)`` is the shape of a named tensor the node can see."""

    def __init__(self, walk: _Walk, node: Node, key: str, base: tuple[str, str], inputs: list[Tensor], names: dict[str, Tensor]):
        self.walk, self.node, self.key, self.base = walk, node, key, base
        self.inputs, self.names = inputs, names
        self.outs: list[str] = []  # the sources of the sub-sequences' outputs
        self.scope: dict[str, Tensor] = {}  # the names the last sub-sequence saw and made
        self.last = inputs[0].source

    def __call__(self, seq: list[Node], shape: Shape, index: int | None = None) -> Shape:
        node = self.node
        if node.closed:  # a block's body: its tensor inputs, nothing else
            names = {name: tensor for name, tensor in zip(node.binds(), self.inputs)}
        else:
            names = dict(self.names)
        start = Tensor(shape, self.last if index is not None else self.inputs[0].source)
        base = self.base if index is None else (node.path, f"{self.key}[{index}]")
        outer = dict(names) if index is not None else {}
        out = self.walk.sequence(seq, start, names, base)
        if index is not None:
            self.last = out.source
            for name, tensor in outer.items():  # names the iteration named again: the next one reads them
                if names[name] is not tensor:
                    self.names[name] = names[name]
        self.outs.append(out.source)
        self.scope = names
        return out.shape

    def tensor(self, name: str) -> Shape:
        return self.walk.lookup(self.node, name, self.names).shape


class _Walk:
    def __init__(self, net: Network):
        self.net = net
        self.graph = Graph()
        self.defined = {name: node for layers in net.flows.values() for node in walk(layers) for name in node.saves}

    def network(self) -> Graph:
        net, graph = self.net, self.graph
        names = {INPUT: Tensor(tuple(net.input), INPUT)}
        current = names[INPUT]
        for layers in net.flows.values():
            current = self.sequence(layers, current, names, ("", ""))
        if not net.outputs:
            graph.outputs = {"output": current}
        elif not net.active_outputs():
            w = next(iter(net.output_where.values()))
            raise SpecError(Location(w.file, w.line, w.col, w.spec_path), "expected at least one output switched on, found none")
        active = net.active_outputs()
        for output, tensor in net.outputs.items():  # a switched-off output too: the generated code names its tensor
            if tensor not in names:
                w = net.output_where.get(output) or Where(file=net.file, spec_path="outputs")
                known = sorted(names)
                message = f"expected a tensor that a flow names with as: ({', '.join(known)}), found '{tensor}'"
                if tensor in self.defined:
                    message += " (switched off by its when:, or defined inside a nested sequence)"
                raise SpecError(Location(w.file, w.line, w.col, w.spec_path), message + did_you_mean(tensor, known))
            if output in active:
                graph.outputs[output] = names[tensor]
        return graph

    def sequence(self, layers: list[Node], current: Tensor, names: dict[str, Tensor], base: tuple[str, str]) -> Tensor:
        for node in layers:
            if not self.enabled(node, names):  # switched off: its input (the first tensor it reads) passes on, under its names
                current = self.lookup(node, node.reads[0], names) if node.reads else current
                for name in node.saves:
                    self.define(node, name, current, names)
                continue
            key = base[1] + node.path[len(base[0]) :]
            inputs = [self.lookup(node, name, names) for name in node.reads] or [current]
            for name in node.sizes_from():
                self.lookup(node, name, names)
            run = _Run(self, node, key, base, inputs, names)
            if node.merges:
                if len(node.reads) < 2:
                    raise node.fail(f"expected from: with two or more tensor names for '{node.op}', found {len(node.reads)}")
                out = node.merge([t.shape for t in inputs])
            elif len(inputs) > max(len(node.binds()), 1):
                raise node.fail(f"expected one tensor in from: for '{node.op}', found {len(inputs)} ({', '.join(node.reads)})")
            else:
                out = node.infer(inputs[0].shape, run)
            self.graph.by_key[key] = (inputs[0].shape, out)
            self.graph.by_path.setdefault(node.path, (inputs[0].shape, out))
            self.graph.nodes[key] = node
            sized = tuple(names[name].source for name in node.sizes_from())
            self.graph.reads[key] = tuple(t.source for t in inputs) + sized + tuple(run.outs)
            current = Tensor(out, key)
            pieces = node.pieces(inputs[0].shape)
            if pieces:  # several tensors, one per name of its as:
                if len(node.saves) != len(pieces):
                    raise node.fail(f"expected as: with a name for each of the {len(pieces)} parts, found {len(node.saves)}")
                for name, shape in zip(node.saves, pieces, strict=True):
                    self.define(node, name, Tensor(shape, key), names)
                continue
            if node.results():  # the tensors a block returns, named in order (one: under every name)
                results = [self.returned(node, name, run.scope) for name in node.results()]
                current = results[0]
                for name, tensor in zip(node.saves, results * len(node.saves) if len(results) == 1 else results, strict=False):
                    self.define(node, name, tensor, names)
                continue
            for name in node.saves:
                self.define(node, name, current, names)
        return current

    @staticmethod
    def returned(node: Node, name: str, scope: dict[str, Tensor]) -> Tensor:
        if name not in scope:
            known = ", ".join(sorted(scope)) or "none"
            raise node.fail(f"expected the outputs of block '{node.label()}' to name tensors of its body ({known}), found '{name}'")
        return scope[name]

    def enabled(self, node: Node, names: dict[str, Tensor]) -> bool:
        """Whether the node runs here: its ``when:``, or where that reads tensor sizes,
        its value at this instance (each iteration of a repeat may differ)."""
        test = node.refs.get("when")
        if not node.when or not test or "(" not in test or not expr.tensors(tree := expr.parse(test)):
            return node.when
        symbols = {**node.bound, **{name: self.lookup(node, name, names).shape for name in sorted(expr.tensors(tree))}}
        try:
            value = expr.evaluate(tree, symbols)
        except expr.ExprError as exc:
            raise node.fail(f"{exc.message} (in when: ${{{test}}})") from None
        if not isinstance(value, bool):
            raise node.fail(f"expected when: to be true or false, found {value!r} (from ${{{test}}})")
        return value

    @staticmethod
    def define(node: Node, name: str, tensor: Tensor, names: dict[str, Tensor]) -> None:
        """Names a tensor; a name is defined once where it is visible, unless the layer
        that names it again reads it (``from: [x, p], as: [x, p]``, as Python reassigns)."""
        if name in names and name not in node.reads:
            raise node.fail(
                f"expected a tensor name not yet defined where it is visible, found '{name}' again (only a layer that reads it may name it again)"
            )
        names[name] = tensor

    def lookup(self, node: Node, name: str, names: dict[str, Tensor]) -> Tensor:
        """The tensor ``name`` as ``node`` sees it, or a located error saying why not."""
        if name in names:
            return names[name]
        if name in self.defined:
            other, here = self.defined[name].where, node.where
            if (other.line, other.col) > (here.line, here.col):
                raise node.fail(
                    f"expected a tensor defined before this layer (a graph has no cycles), found '{name}', "
                    f"defined after it (line {other.line}, {other.spec_path})"
                )
            raise node.fail(
                f"expected a tensor visible here, found '{name}', defined in a sequence this layer cannot see (line {other.line}, {other.spec_path})"
            )
        known = ", ".join(sorted(names)) or "none visible here"
        raise node.fail(f"expected a tensor name defined with as: ({known}), found '{name}'{did_you_mean(name, sorted(names))}")


def output_shape(net: Network, shapes: Shapes) -> Shape:
    last = [node for layers in net.flows.values() for node in layers if node.when]
    return shapes[last[-1].path][1] if last else tuple(net.input)
