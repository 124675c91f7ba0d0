"""The torch backend's decisions: an analysed spec -> what the templates print.

The generated module mirrors the IR tree: a flow is an ``nn.Sequential`` attribute of
the model, a block instance a module of its block's class, a residual a ``Residual``
(``body``, ``shortcut``), branches a ``Branches`` keyed by path, a repeat a ``Repeat``
of N bodies; every attribute name is ``plan.ident[path]``. :func:`qualified_names`
spells that mapping out for tests and cross-backend checks.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from archc import ir
from archc.analysis import Analysis
from archc.codegen import Plan
from archc.codegen import plan as make_plan
from archc.errors import UserError
from archc.fold import folds
from archc.ir import (
    BN,
    Act,
    AvgPool,
    Branches,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    Node,
    Repeat,
    Residual,
    SepConv,
    children,
)
from archc.naming import Namespace, class_name

from . import values as v
from .layout import Call, Expr, IfElse, Lambda, assign, signature
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
    "SeparableConv2d": ("conv2d", "activation"),
    "KerasBatchNorm2d": (),
    "KerasBatchNorm1d": (),
    "FlattenHWC": (),
    "Residual": (),
    "Branches": (),
    "Repeat": (),
}

# Names the generated code gives its own meaning; no spec name may become one of them.
RESERVED = MODULE_ATTRIBUTES | set(HELPERS) | {"ACTIVATIONS", "OrderedDict", "Callable", "in_channels", "INPUT_SIZE"}
RESERVED |= {"BN_FOLDS", "fold_batchnorm", "_expand"}  # the batch norm fold (templates/fold.py.j2)

# op -> the submodule whose output channels a batch norm after it scales (archc.fold)
FOLD_INTO = {"conv": "", "sepconv": ".pointwise", "dense": ""}

ACTIVATIONS = {
    "relu": Call("nn.ReLU"),
    "relu6": Call("nn.ReLU6"),
    "elu": Call("nn.ELU"),
    "sigmoid": Call("nn.Sigmoid"),
    "tanh": Call("nn.Tanh"),
    "silu": Call("nn.SiLU"),
    "gelu": Call("nn.GELU"),
    "softmax": Call("nn.Softmax", (("dim", "1"),)),
}
IDENTITY = Call("nn.Identity")
IN_PLACE = {ACTIVATIONS[k]: Call(ACTIVATIONS[k].func, (("inplace", "True"),)) for k in ("relu", "relu6")}
# Ops whose output is a new tensor that their own backward pass does not read.
FRESH_OUTPUT = (Conv, SepConv, BN, MaxPool, AvgPool, GlobalAvgPool, Dense, Branches)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Python source: every spec text is escaped or made an identifier first
)


class Unsupported(UserError):
    """A spec the IR accepts but this backend cannot express (said with the node's path)."""


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
        if ref not in env:
            raise Unsupported(
                f"{node.path}: '${ref}' names an argument of a calling block; the torch backend needs it declared as an argument of this block"
            )
        return env[ref]

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
            raise Unsupported(
                f"{node.path}: a `when: ${node.refs['when']}` on a layer that turns feature maps into vectors is not supported"
            )
        return cond, v.switch(cond, new, ch), new_rank

    def effects(self, nodes: list[Node], env: dict[str, Value], ch: Channels, rank: int) -> tuple[Channels, int]:
        for node in nodes:
            _, ch, rank = self.step(node, env, ch, rank)
        return ch, rank

    def effect(self, node: Node, env: dict[str, Value], ch: Channels, rank: int) -> tuple[Channels, int]:
        if isinstance(node, (Conv, SepConv)):
            return self.value(node, "filters", env), rank
        if isinstance(node, Dense):
            return self.value(node, "units", env), 1
        if isinstance(node, GlobalAvgPool):
            return ch, 1
        if isinstance(node, Flatten):
            return (self.flat_size(node), 1) if rank == 3 else (ch, 1)
        if isinstance(node, (Residual, Repeat)):
            return self.effects(node.body, env, ch, rank)
        if isinstance(node, Branches):
            outs = [self.effects(path, env, ch, rank) for path in node.paths.values()]
            return v.total([c for c, _ in outs]), outs[0][1]
        if isinstance(node, ir.Call):
            return self.effects(node.body, self.callee_env(node, env), ch, rank)
        return ch, rank

    def flat_size(self, node: Flatten) -> Lit:
        """A flatten's output size, as archc infers it for the spec's params."""
        if node.path not in self.analysis.shapes:
            raise Unsupported(f"{node.path}: the size of a flatten that is switched off by default is not known")
        return Lit(self.analysis.shapes[node.path][1][0])

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
            if fresh and isinstance(node, Act) and expr in IN_PLACE:
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
        return getattr(self, f"layer_{type(node).__name__.lower()}")(node, env, ch, rank)

    def use(self, helper: str) -> str:
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

    def layer_conv(self, node: Conv, env, ch, rank) -> Expr:
        kernel, stride = self.value(node, "kernel", env), self.value(node, "stride", env)
        func, padding = self.padded(node, env, kernel, stride, "nn.Conv2d", "Conv2dSame", "conv2d")
        args = (v.code(ch), v.code(self.value(node, "filters", env)), v.size(kernel))
        rest = self.option(node, env, "stride", fmt=v.size) + padding + self.option(node, env, "groups") + self.option(node, env, "bias")
        return Call(func, (*args, *rest))

    def layer_sepconv(self, node: SepConv, env, ch, rank) -> Expr:
        args = (v.code(ch), v.code(self.value(node, "filters", env)), v.size(self.value(node, "kernel", env)))
        rest = self.option(node, env, "stride", fmt=v.size)
        for name in ("padding", "depth_multiplier", "segments", "between", "bias"):
            rest += self.option(node, env, name)
        return Call(self.use("SeparableConv2d"), (*args, *rest))

    def pool(self, node: MaxPool | AvgPool, env, names: tuple[str, str, str]) -> tuple[str, tuple, list]:
        kernel, stride = self.value(node, "pool", env), self.value(node, "stride", env)
        func, padding = self.padded(node, env, kernel, stride, *names)
        return func, (v.size(kernel), *self.option(node, env, "stride", fmt=v.size)), padding

    def layer_maxpool(self, node: MaxPool, env, ch, rank) -> Expr:
        func, args, padding = self.pool(node, env, ("nn.MaxPool2d", "MaxPool2dSame", "max_pool2d"))
        return Call(func, (*args, *padding))

    def layer_avgpool(self, node: AvgPool, env, ch, rank) -> Expr:
        """TF leaves padded cells out of the average: count_include_pad=False."""
        func, args, padding = self.pool(node, env, ("nn.AvgPool2d", "AvgPool2dSame", "avg_pool2d"))
        exclude = [("count_include_pad", "False")] if func == "nn.AvgPool2d" and padding else []
        return Call(func, (*args, *padding, *exclude))

    def layer_bn(self, node: BN, env, ch, rank) -> Expr:
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

    def layer_act(self, node: Act, env, ch, rank) -> Expr:
        kind = self.value(node, "kind", env)
        return ACTIVATIONS[kind.value] if isinstance(kind, Lit) else Call(self.use("activation"), (kind.code,))

    def layer_globalavgpool(self, node: GlobalAvgPool, env, ch, rank) -> Expr:
        return Call("nn.Sequential", (Call("nn.AdaptiveAvgPool2d", ("1",)), Call("nn.Flatten")))

    def layer_flatten(self, node: Flatten, env, ch, rank) -> Expr:
        return Call(self.use("FlattenHWC")) if rank == 3 else Call("nn.Flatten")

    def layer_dense(self, node: Dense, env, ch, rank) -> Expr:
        return Call("nn.Linear", (v.code(ch), v.code(self.value(node, "units", env)), *self.option(node, env, "bias")))

    def layer_dropout(self, node: Dropout, env, ch, rank) -> Expr:
        return Call("nn.Dropout", (v.code(self.value(node, "rate", env)),))

    def layer_residual(self, node: Residual, env, ch, rank) -> Expr:
        use = self.value(node, "use_shortcut", env)
        shortcut: Expr = "None"
        if use != Lit(False):
            shortcut = self.sequential(node.shortcut, env, ch, rank)
            shortcut = IfElse(shortcut, use.code, "None") if isinstance(use, Sym) else shortcut
        args = (("body", self.sequential(node.body, env, ch, rank)), ("shortcut", shortcut))
        if use != Lit(False) and _fresh_after_sequence(node.body, env, self):
            args += (("inplace", "True"),)  # the body's output is fresh: add the shortcut into it
        return Call(self.use("Residual"), args)

    def layer_branches(self, node: Branches, env, ch, rank) -> Expr:
        paths = [(self.plan.ident[f"{node.path}:{label}"], self.sequential(nodes, env, ch, rank)) for label, nodes in node.paths.items()]
        return Call(self.use("Branches"), tuple(paths))

    def layer_repeat(self, node: Repeat, env, ch, rank) -> Expr:
        times = v.code(self.value(node, "times", env))
        return Call(self.use("Repeat"), (times, Lambda(self.sequential(node.body, env, ch, rank))))

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
            raise Unsupported(f"{node.path}: a block argument of {type(value).__name__} has no Python literal here") from None

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
        if isinstance(node, ir.Call):
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
    bn_folds = [(names[f.producer] + FOLD_INTO[f.op], names[f.bn]) for f in folds(analysis)]
    return TEMPLATES.get_template("module.py.j2").render(
        header=header(analysis, r.plan),
        imports=imports(r.ordered_dict, helpers),
        folds=bn_folds,
        input_size=literal((analysis.net.input[2], *analysis.net.input[:2])),
        helpers=[f"helpers/{h}.py.j2" for h in helpers],
        classes=[*(blocks[b] for b in r.block_order()), model],
        model=model.name,
    )


def imports(ordered_dict: bool, helpers: list[str]) -> list[str]:
    """The import lines, grouped and sorted as isort (ruff's I rules) wants them."""
    stdlib = [
        line
        for line, used in (
            ("from collections import OrderedDict", ordered_dict),
            ("from collections.abc import Callable", "Repeat" in helpers),
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
            if not node.when and "when" not in node.refs:
                continue
            name = names[node.path] = f"{prefix}{plan.ident[node.path]}"
            if isinstance(node, Residual):
                walk(node.body, f"{name}.body.", depth)
                if node.use_shortcut or "use_shortcut" in node.refs:
                    walk(node.shortcut, f"{name}.shortcut.", depth)
            elif isinstance(node, Branches):
                for label, seq in node.paths.items():
                    walk(seq, f"{name}.{plan.ident[f'{node.path}:{label}']}.", depth)
            elif isinstance(node, Repeat):
                walk(node.body, f"{name}.{{{depth}}}.", depth + 1)
            elif isinstance(node, ir.Call):
                walk(node.body, f"{name}.", depth)

    for flow, nodes in plan.analysis.net.flows.items():
        walk(nodes, f"{plan.ident[flow]}.", 0)
    return names


def torch_plan(analysis: Analysis) -> Plan:
    """The codegen plan with the names the generated code reserves for itself."""
    return Renderer(analysis).plan


def _fresh_after(node: Node, fresh: bool, env: dict[str, Value], renderer: Renderer) -> bool:
    """Whether the tensor after ``node`` is one that later in-place ops may overwrite:
    made by this sequence, and not read by any backward pass (an activation's is)."""
    if isinstance(node, FRESH_OUTPUT):
        return True
    if isinstance(node, Residual):
        return renderer.value(node, "use_shortcut", env) == Lit(True) or _fresh_after_sequence(node.body, env, renderer)
    if isinstance(node, Repeat):
        return _fresh_after_sequence(node.body, env, renderer)
    if isinstance(node, ir.Call):
        return _fresh_after_sequence(node.body, renderer.callee_env(node, env), renderer)
    return False  # activations, dropout (the identity in eval), flatten (a view)


def _fresh_after_sequence(nodes: list[Node], env: dict[str, Value], renderer: Renderer) -> bool:
    fresh = False
    for node in nodes:
        cond = renderer.value(node, "when", env)
        if cond == Lit(False):
            continue
        fresh = _fresh_after(node, fresh, env, renderer) and (fresh or not isinstance(cond, Sym))
    return fresh
