"""The torch backend's decisions: an analysed spec -> what the templates print.

The generated module is written as a timm author would: one class per block, whose
``__init__`` makes its layers and whose ``forward`` shows its data flow as statements
(the residual add, the branch concat, the gate product, an ``if`` where a param switches
one off, a loop over a repeat's runs where they are not one module each); the model
holds one module per flow. Where each layer lives is :mod:`.scope`'s rule (``state_dict``
keys no deeper than the spec's nesting), the statements are :mod:`.statements`, the
channel algebra is :mod:`.channels`, and each op is one record in :data:`.ops.OPS`
(emitter or statement layout, channels, weights, fold target, fresh output, helpers).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from archc.codegen.naming import Namespace, class_name
from archc.codegen.plan import Plan, helper_source
from archc.codegen.plan import plan as make_plan
from archc.ir.ops import Node, children, tensor_reads, walk
from archc.passes.analysis import Analysis
from archc.passes.fold import folds, swaps, takes_pad
from archc.passes.shapes import INPUT
from archc.syntax import expr

from . import values as v
from .backbone import BackboneView, backbone_view
from .channels import ChannelAlgebra, switched_heads
from .layout import Call, Expr, IfElse, assign, signature
from .ops import HELPERS, IDENTITY, IN_PLACE, MODULE_ATTRIBUTES, OPS, RESERVED, Looped, Unsupported, block_literal, fresh_after
from .scope import TAKEN, holder, qualified_names, scope_names
from .statements import Assign, For, If, Return, Statement, apply, format_statements, returning
from .values import Channels, Lit, Sym, Value, literal

__all__ = ["HELPERS", "MODULE_ATTRIBUTES", "OPS", "RESERVED", "qualified_names", "render", "torch_plan"]

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Python source: every spec text is escaped or made an identifier first
)


@dataclass
class ClassView:
    """One generated nn.Module class, laid out: the template adds the skeleton."""

    name: str
    doc: list[str]
    signature: list[str]
    init: list[str]
    forward: list[str]
    inputs: str = "x: torch.Tensor"  # forward's parameters
    returns: str = "torch.Tensor"
    backbone: BackboneView | None = None  # the model's: forward_features, forward_head, reset_classifier


@dataclass
class Scope:
    """Where layers go while a sequence is laid out: ``owner`` is how ``forward`` reaches
    them (``self``, a flow's ``self.flow``, a repeat's loop variable), ``names`` their
    attributes (:mod:`.scope`), ``attributes`` what ``__init__`` (or the ``nn.ModuleDict``)
    assigns, in order; ``root`` the class's own scope, which holds the flags."""

    owner: str
    names: dict[str, str]
    space: Namespace
    attributes: list[tuple[str, Expr]] = field(default_factory=list)
    root: Scope | None = None


@dataclass
class Renderer(ChannelAlgebra):
    """Walks the IR once for the model and once for each block class, laying out each
    class's attributes and ``forward`` statements over the channel algebra."""

    analysis: Analysis
    plan: Plan = field(init=False)
    model: str = field(init=False)
    helpers: set[str] = field(default_factory=set)
    ordered_dict: bool = False
    ranks: dict[str, int] = field(default_factory=dict)  # block -> rank of its input
    current: tuple = ()  # the records of the nodes being emitted, innermost last
    scope: Scope | None = None  # where layers go now
    locals: Namespace | None = None  # the local names of the forward being laid out
    data: str = "x"  # the local a repeat's runs work on
    guards: tuple[str, ...] = ()  # conditions of the switched combinators around
    tensor_channels: dict = field(default_factory=dict)  # named tensor -> (channels, rank) (channels.py)
    tensor_locals: dict[str, str] = field(default_factory=dict)  # named tensor -> its local in the forward laid out
    functional: bool = False  # whether the code calls torch.nn.functional (F.interpolate)
    pads: dict = field(default_factory=dict)  # conv path -> (the zero_pad it takes as its padding, that one's condition)

    def __post_init__(self):
        self.net = self.analysis.net
        self.model = Namespace(RESERVED).create(class_name(self.net.name), "Model")
        self.plan = make_plan(self.analysis, RESERVED | {self.model})
        self.param_of = {ident: name for name, ident in self.plan.params.items()}
        self.read_names = tensor_reads(self.net)  # the names some layer or output reads
        self.switched_heads = switched_heads(self.net)

    # -- the statement layout ------------------------------------------------------------------

    def lay_out(self, nodes: list[Node], env: dict[str, Value], ch: Channels, rank: int, source: str, target: str):
        """(statements, the local that holds the result) of ``nodes`` applied to ``source``
        into ``target``, their layers put into the current scope. A ReLU works in place
        where its input is a tensor this sequence made and no backward pass needs (never
        on the sequence's input, which a shortcut or another path may share), as in
        timm's models: it saves a feature map of memory per activation."""
        out: list[Statement] = []
        fresh = False
        for before, node, after in zip([None, *nodes], nodes, [*nodes[1:], None]):
            if node.reads:  # named tensors instead of the previous output (never overwritten in place)
                source, fresh = self.tensor(node.reads[0]), False
                ch, rank = self.tensor_channels[node.reads[0]]
            if takes_pad(node, after, before):  # the conv after it pads its own input (passes.fold)
                self.pads[after.path] = (node, self.value(node, "when", env))
                continue
            cond, after, after_rank = self.step(node, env, ch, rank)
            if cond == Lit(False):  # passes its input on, under its names
                out += self.name_output(node, source)
                continue
            inner = v.assume(ch, cond)
            if OPS[node.op].forward is not None:
                out += self.combinator(node, cond, env, inner, rank, source, target)
            else:
                called = ", ".join(self.reads(node)) if node.reads else source  # a block's tensor inputs
                out += self.module(node, cond, env, inner, rank, called, target, fresh)
            source = target
            fresh = fresh_after(node, fresh, env, self) and (fresh or not isinstance(cond, Sym))
            ch, rank = after, after_rank
            out += self.name_output(node, source)
        return out, source

    def name_output(self, node: Node, source: str) -> list[Statement]:
        """``skip = x`` for each name of the node's output that a later layer reads."""
        out = []
        for name in node.saves[: 1 if node.splits else None]:  # a split's other parts: its own statement's
            if name in self.read_names:
                self.tensor_locals[name] = self.locals.create(name, "tensor")
                out.append(Assign(self.tensor_locals[name], source))
        return out

    def tensor(self, name: str) -> str:
        """The local that holds a named tensor in the forward being laid out."""
        return self.tensor_locals[name]

    def reads(self, node: Node) -> list[str]:
        return [self.tensor(name) for name in node.reads]

    def module(self, node: Node, cond: Value, env, ch: Channels, rank: int, source: str, target: str, fresh: bool) -> list[Statement]:
        """One layer: an attribute, and ``target = owner.layer(source)`` (or a loop)."""
        self.data = target
        made = self.layer(node, env, ch, rank)
        module = made.module if isinstance(made, Looped) else made
        if fresh and module in IN_PLACE:  # a ReLU
            module = IN_PLACE[module]
        if isinstance(cond, Sym):
            module = IfElse(module, cond.code, "nn.ModuleList()" if isinstance(made, Looped) else IDENTITY)
        attribute = self.scope.names[node.path]
        self.scope.attributes.append((attribute, self.guarded(module)))
        if not isinstance(made, Looped):
            return [Assign(target, apply(self.scope.owner, attribute, source))]
        start = [Assign(target, source)] if source != target else []
        return [*start, For(made.var, f"{self.scope.owner}.{attribute}", made.body)]

    def combinator(self, node: Node, cond: Value, env, ch: Channels, rank: int, source: str, target: str) -> list[Statement]:
        """A residual, branches or a gate: its statements, under an ``if`` where a param
        switches it off."""
        if not isinstance(cond, Sym):
            body, result = OPS[node.op].forward(self, node, env, ch, rank, source, target)
            return body if result == target else [*body, Assign(target, result)]
        start = [Assign(target, source)] if source != target else []
        test = self.flag(f"has_{self.plan.ident[node.path]}", cond, node)
        with self.guard(cond):
            body, result = OPS[node.op].forward(self, node, env, ch, rank, target, target)
        return self.under(test, body if result == target else [*body, Assign(target, result)], start)

    def layer(self, node: Node, env, ch: Channels, rank: int) -> Expr | Looped:
        record = OPS[node.op]
        self.current += (record,)
        try:
            return record.emit(self, node, env, ch, rank)
        finally:
            self.current = self.current[:-1]

    def held(self, nodes: list[Node], env, ch: Channels, rank: int, owner: str, data: str) -> tuple[Expr, list[Statement] | None]:
        """The one module that holds ``nodes`` (a flow, a repeat's run), and the statements
        that run it where it is an ``nn.ModuleDict`` scope (None where it is called)."""
        kind = holder(nodes)
        if kind == "empty":
            return IDENTITY, None
        space = Namespace(TAKEN, attribute=True)
        names = {node.path: name for node, name in scope_names(self.plan, nodes, space)}
        outer, self.scope = self.scope, Scope(owner, names, space, root=self.scope.root)
        try:
            body, result = self.lay_out(nodes, env, ch, rank, data, data)
            attributes = self.scope.attributes
        finally:
            self.scope = outer
        if kind == "single":
            return attributes[0][1], None
        if kind == "chain":
            self.ordered_dict = True
            return Call("nn.Sequential", (Call("OrderedDict", tuple(attributes)),)), None
        items = tuple((v.string(name), module) for name, module in attributes)
        return Call("nn.ModuleDict", (Call("", items, "{}"),)), body if result == data else [*body, Assign(data, result)]

    def local(self, name: str) -> str:
        """A new local name of the forward being laid out (a branch's output, a shortcut)."""
        return self.locals.create(name, "out")

    def flag(self, name: str, cond: Sym, node: Node) -> str:
        """``self.<name> = cond`` in ``__init__``: what ``forward`` tests where a param
        switches a combinator off (as timm's ``has_skip``)."""
        root = self.scope.root
        if self.scope is not root and re.search(rf"\b{expr.INDEX}\b", cond.code):
            raise Unsupported(node, f"a combinator switched by the repeat index ({cond.code}) inside a repeat of several layers")
        attribute = root.space.create(name)
        root.attributes.append((attribute, cond.code))
        return f"self.{attribute}"

    @contextmanager
    def guard(self, cond: Value) -> Iterator[None]:
        """Layers made inside are None where ``cond`` (a param) switches them off."""
        outer = self.guards
        self.guards += (v.atom(cond.code),) if isinstance(cond, Sym) else ()
        try:
            yield
        finally:
            self.guards = outer

    def guarded(self, module: Expr) -> Expr:
        return IfElse(module, " and ".join(self.guards), "None") if self.guards else module

    @staticmethod
    def under(test: str | None, body: list[Statement], before: list[Statement]) -> list[Statement]:
        return [*before, If(test, tuple(body))] if test else [*before, *body]

    def use(self, helper: str) -> str:
        """Put a helper into the generated module: one its op's record lists."""
        if helper not in self.current[-1].helpers:
            raise KeyError(f"the torch record of this op lists no helper '{helper}' (add it to its helpers)")
        self.helpers.add(helper)
        return helper

    # -- classes --------------------------------------------------------------------------

    def module_class(
        self, name: str, doc: str, params: list[str], scope: Scope, statements: list[Statement], data: str = "x", **forward: str
    ) -> ClassView:
        init = [line for attr, module in scope.attributes for line in assign(f"self.{attr}", module, 2)]
        lines = format_statements(returning(statements, data), 2)
        return ClassView(name, docstring(doc, 1), signature("__init__", ["self", *params], 1), init, lines, **forward)

    def new_scope(self, names: dict[str, str], space: Namespace, taken: tuple[str, ...] = ("x",)) -> Scope:
        """The class's own scope; a fresh forward (its locals, ``taken`` its parameters)."""
        scope = Scope("self", names, space)
        scope.root = scope
        self.scope, self.locals = scope, Namespace(RESERVED | {"x", *taken, self.model} | {b.cls for b in self.plan.blocks.values()})
        self.tensor_locals, self.tensor_channels = {}, {}
        return scope

    def block_class(self, block: str) -> ClassView:
        bp = self.plan.blocks[block]
        decl = self.net.blocks[block]
        env = {self.param_of[i]: Sym(i) for i in bp.params} | {a: Sym(i) for a, i in zip(decl.args, bp.args)}
        space = Namespace(TAKEN, attribute=True)
        inputs = bp.tensors or ["x"]  # forward's parameters: the block's tensor inputs
        data = "out" if "x" in bp.tensors else "x"  # the running local, never an input a later layer may read
        scope = self.new_scope({node.path: name for node, name in scope_names(self.plan, bp.instance.body, space)}, space, (*inputs, data))
        rank = self.ranks.get(block, 3)
        channels = [Sym("in_channels"), *(Sym(f"{t}_channels") for t in bp.tensors[1:])]
        self.tensor_locals = dict(zip(bp.instance.tensors, bp.tensors))
        self.tensor_channels = {name: (c, rank) for name, c in zip(bp.instance.tensors, channels)}
        body, result = self.lay_out(bp.instance.body, env, channels[0], rank, inputs[0], data)
        args = [i if default is None else f"{i}={block_literal(bp.instance, default)}" for i, default in zip(bp.args, decl.args.values())]
        keywords = ["*", *args, *bp.params] if args or bp.params else []
        doc = decl.doc or f"The spec's block '{block}'."
        params = [v.code(c) for c in channels] + keywords
        statements = body if result == data else [*body, Assign(data, result)]
        return self.module_class(bp.cls, doc, params, scope, statements, data, inputs=", ".join(f"{t}: torch.Tensor" for t in inputs))

    def model_class(self) -> ClassView:
        net = self.net
        env: dict[str, Value] = {name: Sym(ident) for name, ident in self.plan.params.items()}
        ch: Channels = Lit(net.input[2])
        if 2 in net.input_refs:  # channels from a param: create_model's, not the default's
            ch = Sym(v.atom(self.plan.input_size()[2]))
        rank = 3
        scope = self.new_scope({}, Namespace(TAKEN | {self.plan.ident[f] for f in net.flows}, attribute=True))
        body: list[Statement] = []
        self.tensor_channels[INPUT] = (ch, rank)
        if INPUT in self.read_names:  # a later layer reads the input: keep it apart from x
            self.tensor_locals[INPUT] = self.locals.create("image", "tensor")
            body.append(Assign(self.tensor_locals[INPUT], "x"))
        for flow, nodes in net.flows.items():
            attribute = self.plan.ident[flow]
            if holder(nodes) != "empty":
                module, statements = self.held(nodes, env, ch, rank, f"self.{attribute}", "x")
                scope.attributes.append((attribute, module))
                body += [Assign("x", apply("self", attribute, "x"))] if statements is None else statements
            ch, rank = self.effects(nodes, env, ch, rank)
        params = [f"{self.plan.params[p]}={literal(value)}" for p, value in net.params.items()]
        body, returns = model_outputs(self, body)
        return self.module_class(self.model, net.description or f"The spec '{net.name}'.", params, scope, body, returns=returns)

    def block_order(self) -> list[str]:
        """Blocks with the ones they use first, as one would write them by hand."""
        order: list[str] = []

        def visit(block: str) -> None:
            for node in _calls(self.plan.blocks[block].instance.body):
                if node.block not in order:
                    visit(node.block)
            if block not in order:
                order.append(block)

        for block in self.plan.blocks:
            visit(block)
        return order

    def helper_order(self) -> list[str]:
        needed = set()
        todo = list(self.helpers)
        while todo:
            helper = todo.pop()
            if helper not in needed:
                needed.add(helper)
                todo += HELPERS[helper]
        return [h for h in HELPERS if h in needed]


def model_outputs(r: Renderer, body: list[Statement]) -> tuple[list[Statement], str]:
    """The model's return: its one output, or a dict by output name (an output a param
    switches off is added under ``if self.has_<name>:``), and forward's annotation.
    Where params may leave one output on, that one is the tensor returned, as for a
    model with one output (Inception's default, its auxiliary head off)."""
    net = r.net
    if len(net.outputs) == 1:
        return [*body, Return(r.tensor(next(iter(net.outputs.values()))))], "torch.Tensor"
    if not net.outputs:
        return body, "torch.Tensor"
    always = Call("", tuple((literal(name), r.tensor(t)) for name, t in net.outputs.items() if name not in net.output_when), "{}")
    if not net.output_when:
        return [*body, Return(always)], "dict[str, torch.Tensor]"
    result = r.locals.create("outputs")
    body = [*body, Assign(result, always)]
    for name, (on, ref) in net.output_when.items():
        cond = Sym(expr.to_python(expr.parse(ref), r.plan.params.__getitem__)) if ref else Lit(on)
        if cond == Lit(True) or isinstance(cond, Sym):
            test = r.flag(f"has_{name}", cond, None) if isinstance(cond, Sym) else None
            body = r.under(test, [Assign(f"{result}[{literal(name)}]", r.tensor(net.outputs[name]))], body)
    fixed = [name for name in net.outputs if net.output_when.get(name, (True, ""))[0] and not net.output_when.get(name, (True, ""))[1]]
    if len(fixed) > 1:
        return [*body, Return(result)], "dict[str, torch.Tensor]"
    one = r.tensor(net.outputs[fixed[0]]) if fixed else f"next(iter({result}.values()))"
    body = [*body, If(f"len({result}) == 1", (Return(one),))]
    return [*body, Return(result)], "torch.Tensor | dict[str, torch.Tensor]"


def torch_plan(analysis: Analysis) -> Plan:
    """The codegen plan with the names the generated code reserves for itself."""
    return Renderer(analysis).plan


def _calls(nodes: list[Node]):
    """Block calls directly in ``nodes`` (not inside other calls)."""
    for node in nodes:
        if node.op == "call":
            yield node
        else:
            for _, seq in children(node):
                yield from _calls(seq)


def printable(text: str) -> str:
    """Control characters and line separators become spaces: one line stays one line."""
    return "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)


def escape(text: str) -> str:
    """Text from a spec, safe between triple quotes: backslashes doubled, and every quote
    that could help close the string (in a run, first or last) escaped."""
    return re.sub(r'"{2,}|\A"|"\Z', lambda m: '\\"' * len(m.group()), text.replace("\\", "\\\\"))


def docstring(text: str, depth: int, width: int = 84) -> list[str]:
    """Docstring lines for text from a spec, wrapped (never inside a word)."""
    indent = "    " * depth
    wrap = textwrap.TextWrapper(width - len(indent), break_long_words=False, break_on_hyphens=False)
    paragraphs = [wrap.wrap(p) for p in printable(text).split("\n\n")]
    body = escape("\n".join(line for para in paragraphs if para for line in [*para, ""]).strip() or ".").split("\n")
    if len(body) == 1:
        return [f'{indent}"""{body[0]}"""']
    return [f'{indent}"""{body[0]}', *[f"{indent}{line}" if line else "" for line in body[1:]], f'{indent}"""']


def refuse_what_init_cannot_know(analysis: Analysis) -> None:
    """A torch module makes its layers in ``__init__``, before any tensor exists: a
    ``when:`` over tensor sizes, and a block's several outputs (which the cells that use
    them carry with it), are the Keras backend's for now; one located line here."""
    for node in walk([n for layers in analysis.net.flows.values() for n in layers]):
        test = node.refs.get("when")
        if test and expr.tensors(expr.parse(test)):
            raise Unsupported(node, f"a when: over tensor sizes ({expr.spelled(test)}), which the Keras backend renders")
        if len(node.results()) > 1:
            raise Unsupported(
                node, f"a call of a block with several outputs ({', '.join(node.results())}), which the Keras backend renders"
            )


def render(analysis: Analysis) -> str:
    """The generated module's text."""
    refuse_what_init_cannot_know(analysis)
    r = Renderer(analysis)
    model = r.model_class()
    blocks = {b: r.block_class(b) for b in r.plan.blocks}  # parents first: ranks are known
    helpers = r.helper_order()
    names = qualified_names(r.plan)
    model.backbone = backbone_view(analysis, names)
    if model.backbone is not None:
        model.init += model.backbone.init_lines()
    bn_folds = [(names[f.producer] + OPS[f.op].fold_into, names[f.bn]) for f in folds(analysis)]
    return TEMPLATES.get_template("module.py.j2").render(
        header=header(analysis, r.plan),
        imports=imports(r.ordered_dict, helpers, r.plan.needs, r.functional),
        functions=[helper_source(f) for f in sorted(r.plan.needs - {"math"})],
        folds=bn_folds,
        swaps=[(names[s.pool], names[s.conv]) for s in swaps(analysis)],
        expand=helper_source("_expand"),
        input_size=literal((analysis.net.input[2], *analysis.net.input[:2])),
        helpers=[f"helpers/{h}.py.j2" for h in helpers],
        classes=[*(blocks[b] for b in r.block_order()), model],
        model=model.name,
        backbone=model.backbone,
    )


def imports(ordered_dict: bool, helpers: list[str], needs: set[str], functional: bool = False) -> list[str]:
    """The import lines, grouped and sorted as isort (ruff's I rules) wants them."""
    stdlib = [
        line
        for line, used in (
            ("import math", "math" in needs),  # isort: plain imports before from-imports
            ("from collections import OrderedDict", ordered_dict),
        )
        if used
    ]
    functional = ["import torch.nn.functional as F"] if "pad_same" in helpers or functional else []
    return [*stdlib, *([""] if stdlib else []), "import torch", *functional, "from torch import nn"]


def header(analysis: Analysis, plan: Plan) -> list[str]:
    """The module docstring: the spec, its params, the counts to expect."""
    net, total = analysis.net, analysis.total
    title = f"PyTorch model of the archc spec '{net.name}' ({Path(net.file).name})."
    lines = [title, "", "Generated by archc; edit the spec, not this file.", ""]
    if net.description:  # wrapped at ruff's 88 columns, each of its own lines apart
        wrap = textwrap.TextWrapper(88, break_long_words=False, break_on_hyphens=False)
        lines += [*(part for row in net.description.split("\n") for part in wrap.wrap(row) or [""]), ""]
    if net.params:
        lines += ["Params, the defaults of create_model(**overrides):", ""]
        lines += [f"    {plan.params[name]} = {literal(value)}" for name, value in net.params.items()]
        lines.append("")
    shape = "x".join(map(str, analysis.output))
    lines += [
        f"With these params: input {net.input[2]}x{net.input[0]}x{net.input[1]} (channels x height x width), output {shape};",
        f"{total.trainable:,} trainable parameters and {total.non_trainable:,} non-trainable values",
        f"(BN running mean and variance); {total.macs:,} multiply-adds.",
    ]
    return docstring_lines("\n".join(lines))


def docstring_lines(text: str) -> list[str]:
    """A module docstring kept line for line (the params table is preformatted)."""
    rows = escape("\n".join(row.rstrip() for row in printable(text).split("\n"))).split("\n")
    return [f'"""{rows[0]}', *rows[1:], '"""']
