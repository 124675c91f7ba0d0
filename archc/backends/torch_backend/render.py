"""The torch backend's decisions: an analysed spec -> what the templates print.

The generated module mirrors the IR tree: a flow is an ``nn.Sequential`` attribute of
the model, a block instance a module of its block's class, a residual a ``Residual``
(``body``, ``shortcut``), a gate a ``Gate`` (``body``), branches a ``Branches`` keyed
by path, a repeat a ``Repeat`` of N bodies (an ``IndexedRepeat`` where each body is
built for its index: the channels it gets, a rate); every attribute name is ``plan.ident[path]``. :func:`qualified_names`
spells that mapping out for tests and cross-backend checks. Each op is one record in
``OPS`` (a :class:`.ops.TorchOp`: emitter, channel rule, child attributes, weight mapping,
fold target, fresh output, helpers).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from archc.codegen.naming import Namespace, class_name
from archc.codegen.plan import Plan, helper_source
from archc.codegen.plan import plan as make_plan
from archc.ir import ops as ir
from archc.ir.ops import Node, children
from archc.passes.analysis import Analysis
from archc.passes.fold import MODULE_NAMES, folds, swaps
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError

from . import values as v
from .layout import Call, Expr, IfElse, Lambda, assign, signature
from .ops import (
    CONV_WEIGHTS,
    TorchOp,
    TorchWeights,
    conv_from_neutral,
    conv_to_neutral,
    depthwise_from_neutral,
    depthwise_to_neutral,
    keep,
    module_weights,
    norm_weights,
    sepconv_spatial,
    term,
    times,
    to,
    transpose,
)
from .values import Channels, Lit, Sym, Value, literal

# Public attributes of nn.Module, nn.Sequential and nn.ModuleDict (torch 2.13): a child
# module named like one would be shadowed or refused. A test checks the installed torch.
MODULE_ATTRIBUTES = frozenset(
    """
T_destination add_module append apply bfloat16 buffers call_super_init children clear compile cpu cuda double
dump_patches eval extend extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half
insert ipu items keys load_state_dict modules mtia named_buffers named_children named_modules named_parameters
parameters pop register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty
train type update values xpu zero_grad
""".split()
)

# Helpers the generated file may define, in file order, each with the helpers it uses.
HELPERS: dict[str, tuple[str, ...]] = {
    "_pair": (),
    "same_pad": ("_pair",),
    "pad_same": (),
    "symmetric_padding": ("same_pad",),
    "Conv2dSame": ("same_pad", "pad_same"),
    "conv2d": ("symmetric_padding", "Conv2dSame"),
    "MaxPool2dSame": ("_pair", "same_pad", "pad_same"),
    "max_pool2d": ("symmetric_padding", "MaxPool2dSame"),
    "AvgPool2dSame": ("_pair", "same_pad", "pad_same"),
    "avg_pool2d": ("symmetric_padding", "AvgPool2dSame"),
    "activation": (),
    "zero_padding": (),
    "SeparableConv2d": ("conv2d", "activation"),
    "KerasBatchNorm2d": (),
    "KerasBatchNorm1d": (),
    "FlattenHWC": (),
    "LayerNorm2d": (),
    "LayerScale": (),
    "Rescaling": (),
    "Normalization": (),
    "DropPath": (),
    "Residual": (),
    "Gate": (),
    "Branches": (),
    "Repeat": (),
    "IndexedRepeat": (),
}

# Names the generated code gives its own meaning; no spec name may become one of them.
RESERVED = MODULE_ATTRIBUTES | set(HELPERS) | {"ACTIVATIONS", "OrderedDict", "Callable", "in_channels", "INPUT_SIZE", "i"}
RESERVED |= set(MODULE_NAMES)  # templates/fold.py.j2

ACTIVATIONS = {
    "relu": Call("nn.ReLU"),
    "relu6": Call("nn.ReLU6"),
    "elu": Call("nn.ELU"),
    "sigmoid": Call("nn.Sigmoid"),
    "tanh": Call("nn.Tanh"),
    "silu": Call("nn.SiLU"),
    "swish": Call("nn.SiLU"),
    "gelu": Call("nn.GELU"),
    "hard_sigmoid": Call("nn.Hardsigmoid"),
    "hard_swish": Call("nn.Hardswish"),
    "softmax": Call("nn.Softmax", (("dim", "1"),)),
}
IDENTITY = Call("nn.Identity")
IN_PLACE = {ACTIVATIONS[k]: Call(ACTIVATIONS[k].func, (("inplace", "True"),)) for k in ("relu", "relu6")}
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Python source: every spec text is escaped or made an identifier first
)


class Unsupported(SpecError):
    """A spec the IR accepts but this backend cannot express, located at the node."""

    def __init__(self, node: Node, found: str):
        where = node.where
        super().__init__(
            Location(where.file, where.line, where.col, where.spec_path), f"expected what the torch backend can express, found {found}"
        )


@dataclass
class ClassView:
    """One generated nn.Module class, laid out: the template adds the skeleton."""

    name: str
    doc: list[str]
    signature: list[str]
    init: list[str]
    forward: list[str]


@dataclass
class Renderer:
    """Walks the IR once for the model and once for each block class, tracking what the
    generated code knows at each point: the symbols in scope, the channel count (as an
    expression, since block classes are shared) and whether the data is a feature map."""

    analysis: Analysis
    plan: Plan = field(init=False)
    model: str = field(init=False)
    helpers: set[str] = field(default_factory=set)
    ordered_dict: bool = False
    ranks: dict[str, int] = field(default_factory=dict)  # block -> rank of its input
    current: tuple[TorchOp, ...] = ()  # the records of the nodes being emitted, innermost last

    def __post_init__(self):
        self.net = self.analysis.net
        self.model = Namespace(RESERVED).create(class_name(self.net.name), "Model")
        self.plan = make_plan(self.analysis, RESERVED | {self.model})
        self.param_of = {ident: name for name, ident in self.plan.params.items()}

    # -- values ---------------------------------------------------------------------------

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

    def callee_env(self, node: ir.Call, env: dict[str, Value]) -> dict[str, Value]:
        """Symbols inside a call: the caller's, then the arguments (as the resolver does)."""
        args = {a: self.symbol(node, node.refs[a], env) if a in node.refs else Lit(node.args[a]) for a in self.net.blocks[node.block].args}
        return {**env, **args}

    # -- what a node does to channels and rank --------------------------------------------

    def step(self, node: Node, env: dict[str, Value], ch: Channels, rank: int) -> tuple[Value, Channels, int]:
        """(condition, channels after, rank after) for a node in a sequence."""
        cond = self.value(node, "when", env)
        if cond == Lit(False):
            return cond, ch, rank
        new, new_rank = self.effect(node, env, v.assume(ch, cond), rank)
        if isinstance(cond, Sym) and new_rank != rank:
            raise Unsupported(node, f"`when: ${node.refs['when']}` on a layer that turns feature maps into vectors")
        return cond, v.switch(cond, new, ch), new_rank

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

    # -- layers ---------------------------------------------------------------------------

    def sequence(self, nodes: list[Node], env: dict[str, Value], ch: Channels, rank: int) -> list[tuple[str, Expr]]:
        """(attribute, module expression) for each node that can exist here. A ReLU
        works in place where its input is a tensor this sequence made and no backward
        pass needs (never on the sequence's input, which a shortcut may share), as in
        timm's models: it saves a feature map of memory per activation."""
        items = []
        fresh = False
        for node in nodes:
            cond, after, after_rank = self.step(node, env, ch, rank)
            if cond == Lit(False):
                continue
            expr = self.layer(node, env, v.assume(ch, cond), rank)
            if fresh and expr in IN_PLACE:  # a ReLU
                expr = IN_PLACE[expr]
            items.append((self.plan.ident[node.path], IfElse(expr, cond.code, IDENTITY) if isinstance(cond, Sym) else expr))
            fresh = _fresh_after(node, fresh, env, self) and (fresh or not isinstance(cond, Sym))
            ch, rank = after, after_rank
        return items

    def sequential(self, nodes: list[Node], env: dict[str, Value], ch: Channels, rank: int) -> Expr:
        """``nn.Sequential(OrderedDict(name=layer, ...))``, so that names follow the spec."""
        items = self.sequence(nodes, env, ch, rank)
        if not items:
            return IDENTITY
        self.ordered_dict = True
        return Call("nn.Sequential", (Call("OrderedDict", tuple(items)),))

    def layer(self, node: Node, env: dict[str, Value], ch: Channels, rank: int) -> Expr:
        record = OPS[node.op]
        self.current += (record,)
        try:
            return record.emit(self, node, env, ch, rank)
        finally:
            self.current = self.current[:-1]

    def use(self, helper: str) -> str:
        """Put a helper into the generated module: one its op's record lists."""
        if helper not in self.current[-1].helpers:
            raise KeyError(f"the torch record of this op lists no helper '{helper}' (add it to its helpers)")
        self.helpers.add(helper)
        return helper

    def padded(self, node: Node, env, kernel: Value, stride: Value, plain: str, same: str, factory: str):
        """The layer that realises Keras padding, and its padding argument: torch's own
        symmetric padding where exact, a 'Same' class where TF pads asymmetrically or by
        input size, a factory that decides at construction where an argument chooses."""
        padding = self.value(node, "padding", env)
        if padding == Lit("valid"):
            return plain, []
        if padding == Lit("same") and isinstance(kernel, Lit) and isinstance(stride, Lit):
            pad = v.symmetric_padding(tuple(kernel.value), tuple(stride.value or kernel.value))
            if pad is not None:
                return plain, [("padding", v.size(Lit(pad)))] if any(pad) else []
        if padding == Lit("same"):
            return self.use(same), []
        return self.use(factory), [("padding", v.code(padding))]

    def layer_conv(self, node: ir.Conv, env, ch, rank) -> Expr:
        kernel, stride = self.value(node, "kernel", env), self.value(node, "stride", env)
        func, padding = self.padded(node, env, kernel, stride, "nn.Conv2d", "Conv2dSame", "conv2d")
        args = (v.code(ch), v.code(self.value(node, "filters", env)), v.size(kernel))
        rest = self.option(node, env, "stride", fmt=v.size) + padding + self.option(node, env, "groups") + self.option(node, env, "bias")
        return Call(func, (*args, *rest))

    def layer_sepconv(self, node: ir.SepConv, env, ch, rank) -> Expr:
        args = (v.code(ch), v.code(self.value(node, "filters", env)), v.size(self.value(node, "kernel", env)))
        rest = self.option(node, env, "stride", fmt=v.size)
        for name in ("padding", "depth_multiplier", "segments", "between", "bias"):
            rest += self.option(node, env, name)
        return Call(self.use("SeparableConv2d"), (*args, *rest))

    def pool(self, node: ir.MaxPool | ir.AvgPool, env, names: tuple[str, str, str]) -> tuple[str, tuple, list]:
        kernel, stride = self.value(node, "pool", env), self.value(node, "stride", env)
        func, padding = self.padded(node, env, kernel, stride, *names)
        return func, (v.size(kernel), *self.option(node, env, "stride", fmt=v.size)), padding

    def layer_maxpool(self, node: ir.MaxPool, env, ch, rank) -> Expr:
        func, args, padding = self.pool(node, env, ("nn.MaxPool2d", "MaxPool2dSame", "max_pool2d"))
        return Call(func, (*args, *padding))

    def layer_avgpool(self, node: ir.AvgPool, env, ch, rank) -> Expr:
        """TF leaves padded cells out of the average: count_include_pad=False."""
        func, args, padding = self.pool(node, env, ("nn.AvgPool2d", "AvgPool2dSame", "avg_pool2d"))
        exclude = [("count_include_pad", "False")] if func == "nn.AvgPool2d" and padding else []
        return Call(func, (*args, *padding, *exclude))

    def layer_bn(self, node: ir.BN, env, ch, rank) -> Expr:
        dims = "2d" if rank == 3 else "1d"
        center, scale = self.value(node, "center", env), self.value(node, "scale", env)
        args = (
            v.code(ch),
            ("eps", v.code(self.value(node, "epsilon", env))),
            ("momentum", v.code(v.torch_momentum(self.value(node, "momentum", env)))),
        )
        if center == scale == Lit(True):
            return Call(f"nn.BatchNorm{dims}", args)
        if center == scale == Lit(False):
            return Call(f"nn.BatchNorm{dims}", (*args, ("affine", "False")))
        flags = self.option(node, env, "center") + self.option(node, env, "scale")
        return Call(self.use(f"KerasBatchNorm{dims}"), (*args, *flags))

    def layer_act(self, node: ir.Act, env, ch, rank) -> Expr:
        kind = self.value(node, "kind", env)
        return ACTIVATIONS[kind.value] if isinstance(kind, Lit) else Call(self.use("activation"), (kind.code,))

    def layer_globalavgpool(self, node: ir.GlobalAvgPool, env, ch, rank) -> Expr:
        if node.keepdims:
            return Call("nn.AdaptiveAvgPool2d", ("1",))
        return Call("nn.Sequential", (Call("nn.AdaptiveAvgPool2d", ("1",)), Call("nn.Flatten")))

    def layer_flatten(self, node: ir.Flatten, env, ch, rank) -> Expr:
        return Call(self.use("FlattenHWC")) if rank == 3 else Call("nn.Flatten")

    def layer_dense(self, node: ir.Dense, env, ch, rank) -> Expr:
        return Call("nn.Linear", (v.code(ch), v.code(self.value(node, "units", env)), *self.option(node, env, "bias")))

    def layer_channeldense(self, node, env, ch, rank) -> Expr:
        """A 1x1 conv: the same weights as a dense layer over each pixel's channels."""
        return Call("nn.Conv2d", (v.code(ch), v.code(self.value(node, "units", env)), "1", *self.option(node, env, "bias")))

    def layer_dropout(self, node: ir.Dropout, env, ch, rank) -> Expr:
        return Call("nn.Dropout", (v.code(self.value(node, "rate", env)),))

    def layer_residual(self, node: ir.Residual, env, ch, rank) -> Expr:
        use = self.value(node, "use_shortcut", env)
        shortcut: Expr = "None"
        if use != Lit(False):
            shortcut = self.sequential(node.shortcut, env, ch, rank)
            shortcut = IfElse(shortcut, use.code, "None") if isinstance(use, Sym) else shortcut
        args = (("body", self.sequential(node.body, env, ch, rank)), ("shortcut", shortcut))
        if use != Lit(False) and fresh_after_sequence(node.body, env, self):
            args += (("inplace", "True"),)  # the body's output is fresh: add the shortcut into it
        return Call(self.use("Residual"), args)

    def layer_branches(self, node: ir.Branches, env, ch, rank) -> Expr:
        paths = [(self.plan.ident[f"{node.path}:{label}"], self.sequential(nodes, env, ch, rank)) for label, nodes in node.paths.items()]
        return Call(self.use("Branches"), tuple(paths))

    def layer_repeat(self, node, env, ch, rank) -> Expr:
        times = v.code(self.value(node, "times", env))
        _, inputs, _ = self.repeat_channels(node, env, ch, rank)
        if inputs is None and not self.plan.reads_index(node):
            return Call(self.use("Repeat"), (times, Lambda(self.sequential(node.body, env, ch, rank))))
        # each run's values (the channels it receives, a rate) depend on its index
        body = self.sequential(node.body, {**env, expr.INDEX: Sym(expr.INDEX)}, ch if inputs is None else inputs, rank)
        return Call(self.use("IndexedRepeat"), (times, Lambda(body, expr.INDEX)))

    def layer_gate(self, node, env, ch, rank) -> Expr:
        return Call(self.use("Gate"), (self.sequential(node.body, env, ch, rank),))

    def layer_depthwise(self, node, env, ch, rank) -> Expr:
        kernel, stride = self.value(node, "kernel", env), self.value(node, "stride", env)
        func, padding = self.padded(node, env, kernel, stride, "nn.Conv2d", "Conv2dSame", "conv2d")
        out = times(ch, self.value(node, "depth_multiplier", env))
        rest = self.option(node, env, "stride", fmt=v.size) + padding + [("groups", v.code(ch))] + self.option(node, env, "bias")
        return Call(func, (v.code(ch), v.code(out), v.size(kernel), *rest))

    def layer_layernorm(self, node, env, ch, rank) -> Expr:
        center, scale = self.value(node, "center", env), self.value(node, "scale", env)
        if center != scale or not isinstance(center, Lit):
            raise Unsupported(node, "a layer_norm with only one of center and scale")
        args = (v.code(ch), ("eps", v.code(self.value(node, "epsilon", env))))
        args += () if center.value else (("elementwise_affine", "False"),)
        return Call(self.use("LayerNorm2d") if rank == 3 else "nn.LayerNorm", args)

    def layer_layerscale(self, node, env, ch, rank) -> Expr:
        return Call(self.use("LayerScale"), (v.code(ch), v.code(self.value(node, "init", env))))

    def layer_identity(self, node, env, ch, rank) -> Expr:
        return IDENTITY

    def layer_zeropad(self, node, env, ch, rank) -> Expr:
        if "padding" in node.refs:
            return Call("nn.ZeroPad2d", (Call(self.use("zero_padding"), (v.code(self.value(node, "padding", env)),)),))
        (top, bottom), (left, right) = node.padding
        return Call("nn.ZeroPad2d", (literal((left, right, top, bottom)),))

    def layer_rescale(self, node, env, ch, rank) -> Expr:
        return Call(self.use("Rescaling"), (v.code(self.value(node, "scale", env)), *self.option(node, env, "offset")))

    def layer_normalize(self, node, env, ch, rank) -> Expr:
        given = [(name, literal(tuple(getattr(node, name)))) for name in ("mean", "variance") if getattr(node, name) is not None]
        return Call(self.use("Normalization"), (v.code(ch), *given))

    def layer_upsample(self, node, env, ch, rank) -> Expr:
        """nn.Upsample; bilinear with align_corners=False, the half-pixel centres of TF's resize."""
        mode = self.value(node, "mode", env)
        args = [("scale_factor", v.code(self.value(node, "factor", env))), *self.option(node, env, "mode")]
        if isinstance(mode, Sym):
            args.append(("align_corners", f'False if {mode.code} == "bilinear" else None'))
        elif mode == Lit("bilinear"):
            args.append(("align_corners", "False"))
        return Call("nn.Upsample", tuple(args))

    def layer_droppath(self, node, env, ch, rank) -> Expr:
        return Call(self.use("DropPath"), (v.code(self.value(node, "rate", env)),))

    def layer_call(self, node: ir.Call, env, ch, rank) -> Expr:
        block = self.plan.blocks[node.block]
        self.ranks.setdefault(node.block, rank)
        args: list[tuple[str, str]] = []
        for (name, default), ident in zip(self.net.blocks[node.block].args.items(), block.args):
            if name in node.refs:
                args.append((ident, v.code(self.symbol(node, node.refs[name], env))))
            elif default is None or node.args[name] != default:
                args.append((ident, self.literal(node, node.args[name])))
        args += [(ident, v.code(self.symbol(node, self.param_of[ident], env))) for ident in block.params]
        return Call(block.cls, (v.code(ch), *args))

    def literal(self, node: Node, value) -> str:
        try:
            return literal(value)
        except TypeError:
            raise Unsupported(node, f"a block argument of {type(value).__name__}, which has no Python literal") from None

    # -- classes --------------------------------------------------------------------------

    def module_class(self, name: str, doc: str, params: list[str], attributes: list[tuple[str, Expr]]) -> ClassView:
        init = [line for attr, expr in attributes for line in assign(f"self.{attr}", expr, 2)]
        calls = [f"self.{attr}(x)" for attr, _ in attributes]
        forward = [f"        x = {c}" for c in calls[:-1]] + [f"        return {calls[-1] if calls else 'x'}"]
        return ClassView(name, docstring(doc, 1), signature("__init__", ["self", *params], 1), init, forward)

    def block_class(self, block: str) -> ClassView:
        bp = self.plan.blocks[block]
        decl = self.net.blocks[block]
        env = {self.param_of[i]: Sym(i) for i in bp.params} | {a: Sym(i) for a, i in zip(decl.args, bp.args)}
        attributes = self.sequence(bp.instance.body, env, Sym("in_channels"), self.ranks.get(block, 3))
        args = [i if default is None else f"{i}={self.literal(bp.instance, default)}" for i, default in zip(bp.args, decl.args.values())]
        keywords = ["*", *args, *bp.params] if args or bp.params else []
        return self.module_class(bp.cls, decl.doc or f"The spec's block '{block}'.", ["in_channels", *keywords], attributes)

    def model_class(self) -> ClassView:
        net = self.net
        env: dict[str, Value] = {name: Sym(ident) for name, ident in self.plan.params.items()}
        ch: Channels = Lit(net.input[2])
        if 2 in net.input_refs:  # channels from a param: create_model's, not the default's
            ch = Sym(v.atom(self.plan.input_size()[2]))
        rank = 3
        flows = []
        for flow, nodes in net.flows.items():
            flows.append((self.plan.ident[flow], self.sequential(nodes, env, ch, rank)))
            ch, rank = self.effects(nodes, env, ch, rank)
        params = [f"{self.plan.params[p]}={literal(value)}" for p, value in net.params.items()]
        return self.module_class(self.model, net.description or f"The spec '{net.name}'.", params, flows)

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


def render(analysis: Analysis) -> str:
    """The generated module's text."""
    r = Renderer(analysis)
    model = r.model_class()
    blocks = {b: r.block_class(b) for b in r.plan.blocks}  # parents first: ranks are known
    helpers = r.helper_order()
    names = qualified_names(r.plan)
    bn_folds = [(names[f.producer] + OPS[f.op].fold_into, names[f.bn]) for f in folds(analysis)]
    return TEMPLATES.get_template("module.py.j2").render(
        header=header(analysis, r.plan),
        imports=imports(r.ordered_dict, helpers, r.plan.needs),
        functions=[helper_source(f) for f in sorted(r.plan.needs - {"math"})],
        folds=bn_folds,
        swaps=[(names[s.pool], names[s.conv]) for s in swaps(analysis)],
        expand=helper_source("_expand"),
        input_size=literal((analysis.net.input[2], *analysis.net.input[:2])),
        helpers=[f"helpers/{h}.py.j2" for h in helpers],
        classes=[*(blocks[b] for b in r.block_order()), model],
        model=model.name,
    )


def imports(ordered_dict: bool, helpers: list[str], needs: set[str]) -> list[str]:
    """The import lines, grouped and sorted as isort (ruff's I rules) wants them."""
    stdlib = [
        line
        for line, used in (
            ("import math", "math" in needs),  # isort: plain imports before from-imports
            ("from collections import OrderedDict", ordered_dict),
            ("from collections.abc import Callable", "Repeat" in helpers or "IndexedRepeat" in helpers),
        )
        if used
    ]
    functional = ["import torch.nn.functional as F"] if "pad_same" in helpers else []
    return [*stdlib, *([""] if stdlib else []), "import torch", *functional, "from torch import nn"]


def header(analysis: Analysis, plan: Plan) -> list[str]:
    """The module docstring: the spec, its params, the counts to expect."""
    net, total = analysis.net, analysis.total
    title = f"PyTorch model of the archc spec '{net.name}' ({Path(net.file).name})."
    lines = [title, "", "Generated by archc; edit the spec, not this file.", ""]
    if net.description:
        lines += [net.description, ""]
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


def qualified_names(plan: Plan) -> dict[str, str]:
    """IR path -> qualified name of its module in a model built by the generated file.

    ``{0}``, ``{1}`` ... stand for the indices of the enclosing repeats, outermost first
    (``middle.repeat.{0}.middle1``). Nodes removed by a literal ``when: false`` (or a
    literal ``use_shortcut: false``) have no module; those switched off through a param
    are ``nn.Identity`` (a shortcut, None)."""
    names: dict[str, str] = {}

    def walk(nodes: list[Node], prefix: str, depth: int) -> None:
        for node in nodes:
            if not node.in_code():
                continue
            name = names[node.path] = f"{prefix}{plan.ident[node.path]}"
            for label, seq in node.children():
                if label == "shortcut" and not (node.use_shortcut or "use_shortcut" in node.refs):
                    continue
                inner = OPS[node.op].attribute(plan, node, label, depth)
                walk(seq, f"{name}.{inner}." if inner else f"{name}.", depth + node.indexed)

    for flow, nodes in plan.analysis.net.flows.items():
        walk(nodes, f"{plan.ident[flow]}.", 0)
    return names


# -- the table: one record per op ----------------------------------------------------------


def _body(r: Renderer, node, env, ch, rank):
    return r.effects(node.body, env, ch, rank)


def _branches(r: Renderer, node, env, ch, rank):
    outs = [r.effects(path, env, ch, rank) for path in node.paths.values()]
    return v.total([c for c, _ in outs]), outs[0][1]


def _repeat(r: Renderer, node, env, ch, rank):
    after, _, after_rank = r.repeat_channels(node, env, ch, rank)
    return after, after_rank


def _flatten(r: Renderer, node, env, ch, rank):
    return (r.flat_size(node, ch), 1) if rank == 3 else (ch, 1)


def _pool(r: Renderer, node, env, ch, rank):
    return (ch, 3) if node.keepdims else (ch, 1)


def _depthwise(r: Renderer, node, env, ch, rank):
    return times(ch, r.value(node, "depth_multiplier", env)), rank


def _residual_fresh(r: Renderer, node, env) -> bool:
    return r.value(node, "use_shortcut", env) == Lit(True) or fresh_after_sequence(node.body, env, r)


PADDED = ("Conv2dSame", "conv2d")
OPS: dict[str, TorchOp] = {
    "conv": TorchOp(Renderer.layer_conv, to("filters"), weights=CONV_WEIGHTS, fold_into="", fresh_output=True, helpers=PADDED),
    "depthwise": TorchOp(
        Renderer.layer_depthwise,
        _depthwise,
        weights=TorchWeights(module_weights, {"kernel": depthwise_to_neutral}, {"kernel": depthwise_from_neutral}),
        fold_into="",
        fresh_output=True,
        helpers=PADDED,
    ),
    "sepconv": TorchOp(
        Renderer.layer_sepconv,
        to("filters"),
        weights=TorchWeights(
            lambda m: {"spatial": m.spatial.weight, "pointwise": m.pointwise.weight, "bias": m.pointwise.bias},
            {"spatial": sepconv_spatial(True), "pointwise": conv_to_neutral},
            {"spatial": sepconv_spatial(False), "pointwise": conv_from_neutral},
        ),
        fold_into=".pointwise",
        fresh_output=True,
        helpers=("SeparableConv2d",),
    ),
    "bn": TorchOp(
        Renderer.layer_bn,
        weights=TorchWeights(lambda m: norm_weights(m) | {"moving_mean": m.running_mean, "moving_variance": m.running_var}),
        fresh_output=True,
        helpers=("KerasBatchNorm2d", "KerasBatchNorm1d"),
    ),
    "layer_norm": TorchOp(Renderer.layer_layernorm, weights=TorchWeights(norm_weights), fresh_output=True, helpers=("LayerNorm2d",)),
    "layer_scale": TorchOp(Renderer.layer_layerscale, weights=TorchWeights(lambda m: {"gamma": m.gamma}), helpers=("LayerScale",)),
    "act": TorchOp(Renderer.layer_act, helpers=("activation",)),
    "identity": TorchOp(Renderer.layer_identity),
    "zero_pad": TorchOp(Renderer.layer_zeropad, fresh_output=True, helpers=("zero_padding",)),
    "rescale": TorchOp(Renderer.layer_rescale, helpers=("Rescaling",)),
    "normalize": TorchOp(
        Renderer.layer_normalize,
        weights=TorchWeights(lambda m: {"mean": m.mean, "variance": m.variance, "count": m.count}),
        helpers=("Normalization",),
    ),
    "maxpool": TorchOp(Renderer.layer_maxpool, fresh_output=True, helpers=("MaxPool2dSame", "max_pool2d")),
    "avgpool": TorchOp(Renderer.layer_avgpool, fresh_output=True, helpers=("AvgPool2dSame", "avg_pool2d")),
    "global_avg_pool": TorchOp(Renderer.layer_globalavgpool, _pool, fresh_output=True),
    "flatten": TorchOp(Renderer.layer_flatten, _flatten, helpers=("FlattenHWC",)),  # a view: not fresh
    "dense": TorchOp(
        Renderer.layer_dense,
        to("units", 1),
        weights=TorchWeights(module_weights, {"kernel": transpose}, {"kernel": transpose}),
        fold_into="",
        fresh_output=True,
    ),
    "channel_dense": TorchOp(
        Renderer.layer_channeldense,
        to("units"),
        weights=TorchWeights(
            module_weights, {"kernel": lambda a, inst: a[:, :, 0, 0].T}, {"kernel": lambda a, inst: a.T[:, :, None, None]}
        ),
    ),
    "dropout": TorchOp(Renderer.layer_dropout),  # the identity in eval: not fresh
    "drop_path": TorchOp(Renderer.layer_droppath, helpers=("DropPath",)),
    "upsample": TorchOp(Renderer.layer_upsample, fresh_output=True),
    "residual": TorchOp(Renderer.layer_residual, _body, fresh_output=_residual_fresh, helpers=("Residual",)),
    "gate": TorchOp(Renderer.layer_gate, keep, helpers=("Gate",)),  # a product its backward reads: not fresh
    "branches": TorchOp(
        Renderer.layer_branches,
        _branches,
        lambda plan, node, label, depth: plan.ident[f"{node.path}:{label}"],
        fresh_output=True,
        helpers=("Branches",),
    ),
    "repeat": TorchOp(
        Renderer.layer_repeat,
        _repeat,
        lambda plan, node, label, depth: f"{{{depth}}}",
        fresh_output=lambda r, node, env: fresh_after_sequence(node.body, {**env, expr.INDEX: Lit(0)}, r),
        helpers=("Repeat", "IndexedRepeat"),
    ),
    "call": TorchOp(
        Renderer.layer_call,
        lambda r, node, env, ch, rank: r.effects(node.body, r.callee_env(node, env), ch, rank),
        lambda *_: "",
        fresh_output=lambda r, node, env: fresh_after_sequence(node.body, r.callee_env(node, env), r),
    ),
}


# -- channel arithmetic for repeats that grow the channels and depthwise multipliers ------------


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


def torch_plan(analysis: Analysis) -> Plan:
    """The codegen plan with the names the generated code reserves for itself."""
    return Renderer(analysis).plan


def _fresh_after(node: Node, fresh: bool, env: dict[str, Value], renderer: Renderer) -> bool:
    """Whether the tensor after ``node`` is one that later in-place ops may overwrite:
    made by this sequence, and not read by any backward pass (an activation's is)."""
    rule = OPS[node.op].fresh_output
    return rule(renderer, node, env) if callable(rule) else rule


def fresh_after_sequence(nodes: list[Node], env: dict[str, Value], renderer: Renderer) -> bool:
    fresh = False
    for node in nodes:
        cond = renderer.value(node, "when", env)
        if cond == Lit(False):
            continue
        fresh = _fresh_after(node, fresh, env, renderer) and (fresh or not isinstance(cond, Sym))
    return fresh
