"""The channel algebra of the torch renderer: what the generated code knows at each point
of a sequence, as values it can name (``Lit`` known now, ``Sym`` a param or argument):
a field's value, and the channels and rank after each node. Block classes are shared by
instances with different arguments, so channels are expressions (``in_channels``,
``4096 if fc_layers else 2048``), not numbers."""

from __future__ import annotations

from archc.ir import ops as ir
from archc.ir.ops import Node
from archc.passes.analysis import Analysis
from archc.syntax import expr

from . import values as v
from .ops import OPS, Unsupported, split_widths, term, times
from .values import Channels, Lit, Sym, Value


class ChannelAlgebra:
    """Values and channels as the generated code sees them; :class:`.render.Renderer`
    lays the code out over them."""

    analysis: Analysis
    tensor_channels: dict[str, tuple[Channels, int]]  # named tensor -> (channels, rank) where it is visible
    switched_heads: set[str]  # nodes that may turn maps into vectors under a param: see switched_heads()

    def read_channels(self, node: Node) -> list[tuple[Channels, int]]:
        """(channels, rank) of each named tensor ``node`` reads."""
        return [self.tensor_channels[name] for name in node.reads]

    def value(self, node: Node, name: str, env: dict[str, Value]) -> Value:
        """A field as the generated code sees it here: its symbol if written ``$ref``."""
        ref = node.refs.get(name)
        return Lit(getattr(node, name)) if ref is None else self.symbol(node, ref, env)

    def symbol(self, node: Node, ref: str, env: dict[str, Value]) -> Value:
        """A ``$name`` or ``${...}`` as the generated code sees it here: a literal where
        every name it reads is one, else the expression over the code's names."""
        tree = expr.parse(ref)
        for name in sorted(expr.names(tree)):
            if name not in env:
                raise Unsupported(
                    node, f"'{name}' in {expr.spelled(ref)}, an argument of a calling block (declare it as an argument of this block)"
                )
        if isinstance(tree, expr.Name):
            return env[tree.name]
        values = {n: env[n] for n in expr.names(tree)}
        if all(isinstance(value, Lit) for value in values.values()):
            return Lit(expr.evaluate(tree, {n: value.value for n, value in values.items()}))
        return Sym(expr.to_python(tree, lambda n: v.atom(v.code(values[n]))))

    def option(self, node: Node, env: dict[str, Value], name: str, keyword: str = "", fmt=v.code) -> list[tuple[str, str]]:
        """``keyword=value`` unless the field keeps the IR's default (which torch shares)."""
        value = self.value(node, name, env)
        if isinstance(value, Lit) and value.value == type(node).model_fields[name].default:
            return []
        return [(keyword or name, fmt(value))]

    def callee(self, node: ir.Call, ch: Channels, rank: int) -> dict[str, tuple[Channels, int]]:
        """The named tensors a block's body starts with: its inputs, as the call reads them."""
        if not node.tensors:
            return {}
        return {name: (ch, rank) if i == 0 else self.tensor_channels[read] for i, (name, read) in enumerate(zip(node.tensors, node.reads))}

    def callee_env(self, node: ir.Call, env: dict[str, Value]) -> dict[str, Value]:
        """Symbols inside a call: the caller's, then the arguments (as the resolver does)."""
        args = {
            a: self.symbol(node, node.refs[a], env) if a in node.refs else Lit(node.args[a])
            for a in self.analysis.net.blocks[node.block].args
        }
        return {**env, **args}

    def step(self, node: Node, env: dict[str, Value], ch: Channels, rank: int) -> tuple[Value, Channels, int]:
        """(condition, channels after, rank after) for a node in a sequence; a node that
        reads named tensors starts from the first, and its names get what it gives."""
        if node.reads:
            ch, rank = self.tensor_channels[node.reads[0]]
        cond = self.value(node, "when", env)
        if cond == Lit(False):
            new, new_rank = ch, rank
        else:
            new, new_rank = self.effect(node, env, v.assume(ch, cond), rank)
            if isinstance(cond, Sym) and new_rank != rank and node.path not in self.switched_heads:
                raise Unsupported(node, f"`when: ${node.refs['when']}` on a layer that turns feature maps into vectors")
            new = v.switch(cond, new, ch)
        widths = split_widths(self, node, env, ch) if node.splits else [new] * len(node.saves)  # a split: each part's
        for name, width in zip(node.saves, widths, strict=False):
            self.tensor_channels[name] = (width, new_rank)
        return cond, new, new_rank

    def effects(self, nodes: list[Node], env: dict[str, Value], ch: Channels, rank: int) -> tuple[Channels, int]:
        for node in nodes:
            _, ch, rank = self.step(node, env, ch, rank)
        return ch, rank

    def effect(self, node: Node, env: dict[str, Value], ch: Channels, rank: int) -> tuple[Channels, int]:
        rule = OPS[node.op].channels
        return rule(self, node, env, ch, rank) if rule else (ch, rank)

    def repeat_channels(self, node, env: dict[str, Value], ch: Channels, rank: int) -> tuple[Channels, Channels | None, int]:
        """(channels after, channels into run ``i`` as code of ``i`` or None where every run
        gets ``ch``, rank after) of a repeat. A body that changes the channels either adds
        the same number each run (DenseNet's concatenation: ``in + i * growth``) or sets
        them whatever it gets (a conv: ``in if i == 0 else filters``). Channels are
        integers, the same in every run's body (the resolver checks), so the index is 0 here."""
        env = {**env, expr.INDEX: Lit(0)}
        after, after_rank = self.effects(node.body, env, ch, rank)
        if after == ch:
            return after, None, after_rank
        probe = Sym("in_channels")
        grown, _ = self.effects(node.body, env, probe, rank)
        growth = minus(grown, probe)
        if growth is not None:
            return grow(ch, growth, self.value(node, "times", env)), grow(ch, growth, Sym("i")), after_rank
        if grown == after:
            return after, Sym(f"{term(ch)} if i == 0 else {term(after)}"), after_rank
        raise Unsupported(node, "a repeated body that neither adds a fixed number of channels nor sets them")

    def flat_size(self, node: ir.Flatten, ch: Channels) -> Channels:
        """A flatten's output size: height x width as archc infers them for the spec's
        params, times the channels (an expression where a param sets them)."""
        if node.path not in self.analysis.shapes:
            raise Unsupported(node, "a flatten that is switched off by default (its output size is not known)")
        (height, width, _), (size,) = self.analysis.shapes[node.path]
        return Lit(size) if isinstance(ch, Lit) else times(ch, Lit(height * width))


def minus(grown: Channels, base: Sym) -> Channels | None:
    """``grown - base`` where ``grown`` is ``base`` plus terms not involving it, else None."""
    if isinstance(grown, v.Sum) and base.code in grown.terms and grown.terms.count(base.code) == 1:
        rest = tuple(t for t in grown.terms if t != base.code)
        if not any(base.code in t for t in rest):
            return v.Sum(rest, grown.const) if rest else Lit(grown.const)
    return None


def grow(ch: Channels, growth: Channels, runs: Value) -> Channels:
    """``ch + runs * growth``: the channels after ``runs`` runs of a growing body."""
    if all(isinstance(x, Lit) for x in (ch, growth, runs)):
        return Lit(ch.value + runs.value * growth.value)
    base = f"({v.code(ch)})" if isinstance(ch, v.Choice) else v.code(ch)  # `+` binds tighter than `if`
    return Sym(f"{base} + {term(runs)} * {term(growth)}")


def switched_heads(net: ir.Network) -> set[str]:
    """The top-level nodes under ``when: $p`` that may change the rank (an auxiliary head's
    pooling): what follows them in their flow, up to a layer that reads named tensors,
    is under the same ``$p``; that chain's output goes nowhere else (the last flow with
    declared outputs, or a next flow that starts from named tensors); and every reader
    of its names, layer or output, is switched by the same ``$p``. Off, nothing reads
    what the chain would have made, so no layer is built for the wrong rank."""
    readers: dict[str, set[str]] = {}
    for node in ir.walk([n for nodes in net.flows.values() for n in nodes]):
        for name in (*node.reads, *node.sizes_from()):
            readers.setdefault(name, set()).add(node.refs.get("when", "" if node.when else "false"))
    for output, tensor in net.outputs.items():
        readers.setdefault(tensor, set()).add(net.output_when.get(output, (True, ""))[1])
    safe: set[str] = set()
    flows = list(net.flows.values())
    for f, nodes in enumerate(flows):
        for i, node in enumerate(nodes):
            ref = node.refs.get("when")
            if not ref:
                continue
            chain = [node]
            for later in nodes[i + 1 :]:
                if later.reads:
                    break
                chain.append(later)
            ends = len(chain) == len(nodes) - i
            following = flows[f + 1][0] if f + 1 < len(flows) else None
            goes_on = ends and (following is None and not net.outputs or following is not None and not following.reads)
            if goes_on or any(n.refs.get("when") != ref for n in chain):
                continue
            if all(readers.get(name, set()) <= {ref} for n in chain for name in n.saves):
                safe.add(node.path)
    return safe
