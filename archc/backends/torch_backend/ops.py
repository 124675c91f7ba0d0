"""The torch records of the ops: ``OPS``, one :class:`TorchOp` per op, and the emitters
they name.

A record holds everything the torch backend knows about one op: the emitter (the
module expression, or for a residual, branches and a gate the statements of
``forward``), what the op does to the channels and rank the generated code tracks,
how its child sequences are named (:mod:`.scope`), the weight mapping (role -> tensor
of the module, and the layout changes to and from the neutral format), the submodule a
folded batch norm scales, whether its output is a fresh tensor that an in-place
activation after it may overwrite, and the helper templates its emitter may use.

Emitters take the renderer (:class:`.render.Renderer`) and ask it for values and
channels; nothing here imports torch: the weight functions touch a module's tensors (or
numpy arrays) only when they are called, by :mod:`.weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from archc.codegen.plan import literal
from archc.ir import ops as ir
from archc.ir.ops import Node
from archc.passes.fold import MODULE_NAMES
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError

from . import values as v
from .layout import Call, Each, Expr, IfElse
from .statements import Assign, Statement
from .values import Channels, Lit, Sym, Value

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
    "conv_padding": (),
    "SeparableConv2d": ("conv2d", "activation"),
    "KerasBatchNorm2d": (),
    "KerasBatchNorm1d": (),
    "FlattenHWC": (),
    "LayerNorm2d": (),
    "LayerScale": (),
    "Rescaling": (),
    "Normalization": (),
    "DropPath": (),
    "center_crop": (),
    "ConvTranspose2dSame": (),
}

# Names the generated code gives its own meaning; no spec name may become one of them.
RESERVED = MODULE_ATTRIBUTES | set(HELPERS) | {"ACTIVATIONS", "OrderedDict", "in_channels", "INPUT_SIZE", "i"}
RESERVED |= set(MODULE_NAMES)  # templates/fold.py.j2
RESERVED |= {  # templates/backbone.py.j2, features.py.j2: the backbone API
    *("FEATURE_INFO", "FEATURES", "HEAD", "CLASSIFIER", "FeatureInfo", "FeatureListNet", "features_only", "out_indices"),
    *("feature_info", "forward_features", "forward_head", "reset_classifier", "head_hidden_size", "num_classes"),
}

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


class Unsupported(SpecError):
    """A spec the IR accepts but this backend cannot express, located at the node."""

    def __init__(self, node: Node, found: str):
        where = node.where
        super().__init__(
            Location(where.file, where.line, where.col, where.spec_path), f"expected what the torch backend can express, found {found}"
        )


# -- weights: role -> tensor, and the layouts (torch -> neutral = Keras) ----------------------


@dataclass(frozen=True)
class TorchWeights:
    """One op's weights in torch: ``tensors(module)`` -> role -> tensor (None: absent);
    ``to_neutral`` / ``from_neutral``: role -> the layout change (default: none)."""

    tensors: Callable[[Any], dict[str, Any]]
    to_neutral: dict[str, Callable] = field(default_factory=dict)
    from_neutral: dict[str, Callable] = field(default_factory=dict)


def conv_to_neutral(a, inst):
    return a.transpose(2, 3, 1, 0)  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)


def conv_from_neutral(a, inst):
    return a.transpose(3, 2, 0, 1)


def depthwise_to_neutral(a, inst):
    """(C*dm, 1, kh, kw), output channel c*dm + m -> (kh, kw, C, dm)."""
    c = inst.input[-1]
    kh, kw = a.shape[-2:]
    return a.reshape(c, a.shape[0] // c, kh, kw).transpose(2, 3, 0, 1)


def depthwise_from_neutral(a, inst):
    kh, kw, c, dm = a.shape
    return a.transpose(2, 3, 0, 1).reshape(c * dm, 1, kh, kw)


def sepconv_spatial(to_neutral: bool) -> Callable:
    """A sepconv's spatial kernel: depthwise, or a grouped conv's (segments)."""

    def layout(a, inst):
        if inst.node.segments == "depthwise":
            return depthwise_to_neutral(a, inst) if to_neutral else depthwise_from_neutral(a, inst)
        return conv_to_neutral(a, inst) if to_neutral else conv_from_neutral(a, inst)

    return layout


def transposed_to_neutral(a, inst):
    return a.transpose(2, 3, 1, 0)  # (in, out, kh, kw) -> (kh, kw, out, in)


def transposed_from_neutral(a, inst):
    return a.transpose(3, 2, 0, 1)


def transpose(a, inst):
    return a.T


def module_weights(module) -> dict[str, Any]:
    return {"kernel": module.weight, "bias": module.bias}


def norm_weights(module) -> dict[str, Any]:
    return {"gamma": module.weight, "beta": module.bias}


CONV_WEIGHTS = TorchWeights(module_weights, {"kernel": conv_to_neutral}, {"kernel": conv_from_neutral})


# -- channel rules: (renderer, node, env, channels, rank) -> (channels, rank) after it --------------


def keep(r, node, env, ch, rank):
    return ch, rank


def to(name: str, new_rank: int | None = None) -> Callable:
    """Channels become the node's field ``name`` (a conv's filters)."""
    return lambda r, node, env, ch, rank: (r.value(node, name, env), rank if new_rank is None else new_rank)


def times(ch: Channels, factor: Value) -> Channels:
    """``ch * factor`` (a depthwise conv's output channels)."""
    if isinstance(factor, Lit) and factor.value == 1:
        return ch
    if isinstance(ch, Lit) and isinstance(factor, Lit):
        return Lit(ch.value * factor.value)
    return Sym(f"{term(ch)} * {term(factor)}")


def term(value: Channels) -> str:
    """A value as an operand of ``*`` or ``+``: parenthesised unless it is one name or number."""
    text = v.code(value)
    return text if text.isidentifier() or text.replace(".", "").isdigit() else f"({text})"


@dataclass(frozen=True)
class Looped:
    """A repeat whose runs are not one module each: the ``nn.ModuleList`` of its runs, and
    the statements of one run, which ``forward`` runs ``for var in`` that list."""

    module: Expr
    var: str
    body: tuple[Statement, ...]


@dataclass(frozen=True)
class TorchOp:
    """How the torch backend renders one op.

    ``emit(renderer, node, env, ch, rank)`` gives the module expression (or a
    :class:`Looped`); a combinator that is no module (a residual, branches, a gate) has
    ``forward(renderer, node, env, ch, rank, source, target)`` instead, which lays its
    data flow out as statements, and ``prefix(plan, node, label)``, what its child
    sequence's attribute names start with (:mod:`.scope`). ``runs``: a repeat, whose
    child sequence is held once per run; ``nested``: a block call, whose child sequence
    is its class's layers. ``channels``: what the node does to (channels, rank) as
    generated code sees them (None: nothing); ``weights`` its weight mapping (None: it
    has no weights); ``fold_into`` the submodule whose output channels a batch norm after
    it scales ('' the module itself; None: not a fold producer); ``fresh_output`` whether
    its output is a new tensor that its own backward pass does not read (a callable
    (renderer, node, env) -> bool for a combinator); ``helpers`` the helper templates
    (``templates/helpers``) it may use; ``classifier(node)`` a fresh layer like it for
    ``reset_classifier``, ``width`` inputs and ``num_classes`` outputs (None: it cannot
    be a model's classifier)."""

    emit: Callable | None
    channels: Callable | None = None
    forward: Callable | None = None
    prefix: Callable | None = None
    runs: bool = False
    nested: bool = False
    weights: TorchWeights | None = None
    fold_into: str | None = None
    fresh_output: bool | Callable = False
    helpers: tuple[str, ...] = ()
    classifier: Callable | None = None


# -- emitters: (renderer, node, env, channels, rank) -> the module expression ------------------


def padded(r, node: Node, env, kernel: Value, stride: Value, plain: str, same: str, factory: str):
    """The layer that realises Keras padding, and its padding argument: torch's own
    symmetric padding where exact, a 'Same' class where TF pads asymmetrically or by
    input size, a factory that decides at construction where an argument chooses."""
    padding = r.value(node, "padding", env)
    if padding == Lit("valid"):
        return plain, []
    if padding == Lit("same") and isinstance(kernel, Lit) and isinstance(stride, Lit):
        pad = v.symmetric_padding(tuple(kernel.value), tuple(stride.value or kernel.value))
        if pad is not None:
            return plain, [("padding", v.size(Lit(pad)))] if any(pad) else []
    if padding == Lit("same"):
        return r.use(same), []
    return r.use(factory), [("padding", v.code(padding))]


def dilated(r, node: Node, env, kernel: Value) -> tuple[Value, list[tuple[str, str]]]:
    """The span of a dilated kernel ((k - 1) * d + 1, what the padding rule sees) and the
    ``dilation`` argument; the kernel and no argument where it is not dilated."""
    dilation = r.value(node, "dilation", env)
    if dilation == Lit((1, 1)):
        return kernel, []
    if r.value(node, "padding", env) == Lit("valid"):  # no padding to derive from the span
        return kernel, [("dilation", v.size(dilation))]
    if not (isinstance(dilation, Lit) and isinstance(kernel, Lit)):
        raise Unsupported(node, "a dilated layer with 'same' padding whose dilation or kernel a param or argument sets (pad with zero_pad)")
    return Lit(tuple((k - 1) * d + 1 for k, d in zip(kernel.value, dilation.value))), [("dilation", v.size(dilation))]


def padded_conv(r, node: Node, env, kernel: Value, stride: Value):
    """``padded`` for a conv that may be dilated: torch's symmetric padding of the dilated
    span (TF's 'same' pads (k - 1) * d in all, stride 1, so an odd span is symmetric)."""
    span, dilation = dilated(r, node, env, kernel)
    func, padding = padded(r, node, env, span, stride, "nn.Conv2d", "Conv2dSame", "conv2d")
    if dilation and func != "nn.Conv2d":
        raise Unsupported(node, "a dilated conv whose 'same' padding is not symmetric (an even kernel span)")
    return func, taken_pad(r, node, env) + padding + dilation


def taken_pad(r, node: Node, env) -> list[tuple[str, Expr]]:
    """``padding=`` for the zero_pad right before a 'valid' conv that the conv takes as its
    own (passes.fold.takes_pad): its margins as (height, width), through a helper where a
    param or argument sets them, and 0 where the pad's own condition is off."""
    if node.path not in r.pads:
        return []
    pad, cond = r.pads[node.path]
    if cond == Lit(False):
        return []
    margins = r.value(pad, "padding", env)
    if isinstance(margins, Lit):
        (top, _), (left, _) = margins.value
        code = v.size(Lit((top, left)))
    else:
        code = Call(r.use("conv_padding"), (margins.code,))
    return [("padding", code if cond == Lit(True) else IfElse(code, cond.code, "0"))]


def emit_conv(r, node: ir.Conv, env, ch, rank) -> Expr:
    kernel, stride = r.value(node, "kernel", env), r.value(node, "stride", env)
    func, padding = padded_conv(r, node, env, kernel, stride)
    args = (v.code(ch), v.code(r.value(node, "filters", env)), v.size(kernel))
    rest = r.option(node, env, "stride", fmt=v.size) + padding + r.option(node, env, "groups") + r.option(node, env, "bias")
    return Call(func, (*args, *rest))


def emit_sepconv(r, node: ir.SepConv, env, ch, rank) -> Expr:
    if r.value(node, "dilation", env) != Lit((1, 1)):
        raise Unsupported(node, "a dilated sepconv")
    args = (v.code(ch), v.code(r.value(node, "filters", env)), v.size(r.value(node, "kernel", env)))
    rest = r.option(node, env, "stride", fmt=v.size)
    for name in ("padding", "depth_multiplier", "segments", "between", "bias"):
        rest += r.option(node, env, name)
    return Call(r.use("SeparableConv2d"), (*args, *rest))


def _pool(r, node: ir.MaxPool | ir.AvgPool, env, names: tuple[str, str, str]) -> tuple[str, tuple, list]:
    kernel, stride = r.value(node, "pool", env), r.value(node, "stride", env)
    func, padding = padded(r, node, env, kernel, stride, *names)
    return func, (v.size(kernel), *r.option(node, env, "stride", fmt=v.size)), padding


def emit_maxpool(r, node: ir.MaxPool, env, ch, rank) -> Expr:
    func, args, padding = _pool(r, node, env, ("nn.MaxPool2d", "MaxPool2dSame", "max_pool2d"))
    return Call(func, (*args, *taken_pad(r, node, env), *padding))


def emit_avgpool(r, node: ir.AvgPool, env, ch, rank) -> Expr:
    """TF leaves padded cells out of the average: count_include_pad=False."""
    func, args, padding = _pool(r, node, env, ("nn.AvgPool2d", "AvgPool2dSame", "avg_pool2d"))
    exclude = [("count_include_pad", "False")] if func == "nn.AvgPool2d" and padding else []
    return Call(func, (*args, *padding, *exclude))


def emit_bn(r, node: ir.BN, env, ch, rank) -> Expr:
    dims = "2d" if rank == 3 else "1d"
    center, scale = r.value(node, "center", env), r.value(node, "scale", env)
    args = (
        v.code(ch),
        ("eps", v.code(r.value(node, "epsilon", env))),
        ("momentum", v.code(v.torch_momentum(r.value(node, "momentum", env)))),
    )
    if center == scale == Lit(True):
        return Call(f"nn.BatchNorm{dims}", args)
    if center == scale == Lit(False):
        return Call(f"nn.BatchNorm{dims}", (*args, ("affine", "False")))
    flags = r.option(node, env, "center") + r.option(node, env, "scale")
    return Call(r.use(f"KerasBatchNorm{dims}"), (*args, *flags))


def emit_act(r, node: ir.Act, env, ch, rank) -> Expr:
    kind = r.value(node, "kind", env)
    return ACTIVATIONS[kind.value] if isinstance(kind, Lit) else Call(r.use("activation"), (kind.code,))


def emit_globalavgpool(r, node: ir.GlobalAvgPool, env, ch, rank) -> Expr:
    if node.keepdims:
        return Call("nn.AdaptiveAvgPool2d", ("1",))
    return Call("nn.Sequential", (Call("nn.AdaptiveAvgPool2d", ("1",)), Call("nn.Flatten")))


def emit_globalmaxpool(r, node: ir.GlobalMaxPool, env, ch, rank) -> Expr:
    if node.keepdims:
        return Call("nn.AdaptiveMaxPool2d", ("1",))
    return Call("nn.Sequential", (Call("nn.AdaptiveMaxPool2d", ("1",)), Call("nn.Flatten")))


def emit_flatten(r, node: ir.Flatten, env, ch, rank) -> Expr:
    return Call(r.use("FlattenHWC")) if rank == 3 else Call("nn.Flatten")


def emit_dense(r, node: ir.Dense, env, ch, rank) -> Expr:
    return Call("nn.Linear", (v.code(ch), v.code(r.value(node, "units", env)), *r.option(node, env, "bias")))


def emit_channeldense(r, node, env, ch, rank) -> Expr:
    """A 1x1 conv: the same weights as a dense layer over each pixel's channels."""
    return Call("nn.Conv2d", (v.code(ch), v.code(r.value(node, "units", env)), "1", *r.option(node, env, "bias")))


def emit_dropout(r, node: ir.Dropout, env, ch, rank) -> Expr:
    return Call("nn.Dropout", (v.code(r.value(node, "rate", env)),))


def emit_depthwise(r, node, env, ch, rank) -> Expr:
    kernel, stride = r.value(node, "kernel", env), r.value(node, "stride", env)
    func, padding = padded_conv(r, node, env, kernel, stride)
    out = times(ch, r.value(node, "depth_multiplier", env))
    rest = r.option(node, env, "stride", fmt=v.size) + padding + [("groups", v.code(ch))] + r.option(node, env, "bias")
    return Call(func, (v.code(ch), v.code(out), v.size(kernel), *rest))


def emit_layernorm(r, node, env, ch, rank) -> Expr:
    center, scale = r.value(node, "center", env), r.value(node, "scale", env)
    if center != scale or not isinstance(center, Lit):
        raise Unsupported(node, "a layer_norm with only one of center and scale")
    args = (v.code(ch), ("eps", v.code(r.value(node, "epsilon", env))))
    args += () if center.value else (("elementwise_affine", "False"),)
    return Call(r.use("LayerNorm2d") if rank == 3 else "nn.LayerNorm", args)


def emit_layerscale(r, node, env, ch, rank) -> Expr:
    return Call(r.use("LayerScale"), (v.code(ch), v.code(r.value(node, "init", env))))


def emit_identity(r, node, env, ch, rank) -> Expr:
    return IDENTITY


def emit_zeropad(r, node, env, ch, rank) -> Expr:
    if "padding" in node.refs:
        return Call("nn.ZeroPad2d", (Call(r.use("zero_padding"), (v.code(r.value(node, "padding", env)),)),))
    (top, bottom), (left, right) = node.padding
    return Call("nn.ZeroPad2d", (literal((left, right, top, bottom)),))


def emit_rescale(r, node, env, ch, rank) -> Expr:
    return Call(r.use("Rescaling"), (v.code(r.value(node, "scale", env)), *r.option(node, env, "offset")))


def emit_normalize(r, node, env, ch, rank) -> Expr:
    given = [(name, literal(tuple(getattr(node, name)))) for name in ("mean", "variance") if getattr(node, name) is not None]
    return Call(r.use("Normalization"), (v.code(ch), *given))


def emit_convtranspose(r, node: ir.ConvTranspose, env, ch, rank) -> Expr:
    """nn.ConvTranspose2d: 'same' crops (kernel - stride) pixels, the odd one at the end;
    torch's ``padding`` crops both ends alike, so an odd total takes ConvTranspose2dSame."""
    for name in ("kernel", "stride", "padding"):
        if name in node.refs:
            raise Unsupported(node, f"a conv_transpose whose {name} a param or argument sets")
    args = (v.code(ch), v.code(r.value(node, "filters", env)), v.size(Lit(node.kernel)))
    rest = [*r.option(node, env, "stride", fmt=v.size), *r.option(node, env, "bias")]
    (top, bottom), (left, right) = node.crop()
    if top == bottom and left == right:
        pad = [("padding", v.size(Lit((top, left))))] if top or left else []
        return Call("nn.ConvTranspose2d", (*args, *rest, *pad))
    return Call(r.use("ConvTranspose2dSame"), (*args, *rest))


def emit_upsample(r, node, env, ch, rank) -> Expr:
    """nn.Upsample; bilinear with align_corners=False, the half-pixel centres of TF's resize."""
    mode = r.value(node, "mode", env)
    args = [("scale_factor", v.code(r.value(node, "factor", env))), *r.option(node, env, "mode")]
    if isinstance(mode, Sym):
        args.append(("align_corners", f'False if {mode.code} == "bilinear" else None'))
    elif mode == Lit("bilinear"):
        args.append(("align_corners", "False"))
    return Call("nn.Upsample", tuple(args))


def emit_droppath(r, node, env, ch, rank) -> Expr:
    return Call(r.use("DropPath"), (v.code(r.value(node, "rate", env)),))


def block_literal(node: Node, value) -> str:
    try:
        return literal(value)
    except TypeError:
        raise Unsupported(node, f"a block argument of {type(value).__name__}, which has no Python literal") from None


def emit_call(r, node: ir.Call, env, ch, rank) -> Expr:
    block = r.plan.blocks[node.block]
    r.ranks.setdefault(node.block, rank)
    args: list[tuple[str, str]] = []
    for (name, default), ident in zip(r.net.blocks[node.block].args.items(), block.args):
        if name in node.refs:
            args.append((ident, v.code(r.symbol(node, node.refs[name], env))))
        elif default is None or node.args[name] != default:
            args.append((ident, block_literal(node, node.args[name])))
    args += [(ident, v.code(r.symbol(node, r.param_of[ident], env))) for ident in block.params]
    others = [(f"{ident}_channels", v.code(c)) for ident, (c, _) in zip(block.tensors[1:], r.read_channels(node)[1:])]
    return Call(block.cls, (v.code(ch), *others, *args))


def emit_repeat(r, node: ir.Repeat, env, ch, rank) -> Expr | Looped:
    """``nn.Sequential`` of one module per run, built by a generator (over ``i`` where each
    run gets its own values: the channels it receives, a rate); where a run is several
    layers that are no chain, an ``nn.ModuleList`` of ``nn.ModuleDict`` runs and a loop."""
    runs = f"range({v.code(r.value(node, 'times', env))})"
    _, inputs, _ = r.repeat_channels(node, env, ch, rank)
    if inputs is None and not r.plan.reads_index(node):
        var = "_"
    else:
        var, env, ch = expr.INDEX, {**env, expr.INDEX: Sym(expr.INDEX)}, ch if inputs is None else inputs
    run = r.local("run")
    module, body = r.held(node.body, env, ch, rank, run, r.data)
    if body is None:
        return module if module == IDENTITY else Call("nn.Sequential", (Each(module, var, runs),))
    return Looped(Call("nn.ModuleList", (Each(module, var, runs, star=False),)), run, tuple(body))


# -- combinators that are no module: their data flow as statements --------------------------------


def forward_residual(r, node: ir.Residual, env, ch, rank, source: str, target: str):
    """``shortcut = x``, the body, then ``x = x + self.shortcut_...(shortcut)`` (``+=``
    where the body's output is fresh), under ``if self.has_shortcut:`` where a param
    chooses."""
    use = r.value(node, "use_shortcut", env)
    if use == Lit(False):
        return r.lay_out(node.body, env, ch, rank, source, target)
    saved = r.local("shortcut")
    out: list[Statement] = [Assign(saved, source)]
    body, result = r.lay_out(node.body, env, ch, rank, source, target)
    out += body
    if result != target:  # an empty body
        out.append(Assign(target, result))
    test = r.flag("has_shortcut", use, node) if isinstance(use, Sym) else None
    with r.guard(use):
        add, added = r.lay_out(node.shortcut, env, ch, rank, saved, saved)
    fresh = result == target and fresh_after_sequence(node.body, env, r)
    add.append(Assign(target, added, "+=") if fresh else Assign(target, f"{target} + {added}"))
    return r.under(test, add, out), target


def forward_branches(r, node: ir.Branches, env, ch, rank, source: str, target: str):
    """Each path into a local named after it, then ``torch.cat([...], dim=1)``."""
    out: list[Statement] = []
    results = []
    for label, path in node.paths.items():
        body, result = r.lay_out(path, env, ch, rank, source, r.local(r.plan.ident[f"{node.path}:{label}"]))
        out += body
        results.append(result)
    out.append(Assign(target, Call("torch.cat", (Call("", tuple(results), "[]"), ("dim", "1")))))
    return out, target


def forward_gate(r, node: ir.Gate, env, ch, rank, source: str, target: str):
    """The body into a local named after the gate, then ``x = x * gate``."""
    body, result = r.lay_out(node.body, env, ch, rank, source, r.local(r.plan.ident[node.path]))
    return [*body, Assign(target, f"{source} * {result}")], target


# -- ops over named tensors: statements, no module ---------------------------------------------


def forward_concat(r, node: ir.Concat, env, ch, rank, source: str, target: str):
    """``x = torch.cat([a, b], dim=1)``."""
    return [Assign(target, Call("torch.cat", (Call("", tuple(r.reads(node)), "[]"), ("dim", "1"))))], target


def forward_add(r, node: ir.Add, env, ch, rank, source: str, target: str):
    return [Assign(target, " + ".join(r.reads(node)))], target


def forward_multiply(r, node: ir.Multiply, env, ch, rank, source: str, target: str):
    return [Assign(target, " * ".join(r.reads(node)))], target


def forward_resize(r, node: ir.Resize, env, ch, rank, source: str, target: str):
    """``F.interpolate`` to the named tensor's size; bilinear with align_corners=False
    (half-pixel centres, as TF), nearest as 'nearest-exact' (TF's nearest samples at
    half-pixel centres too; torch's 'nearest' does not, for sizes that do not divide)."""
    r.functional = True
    mode = r.value(node, "mode", env)
    like = f"{r.tensor(node.like)}.shape[-2:]"
    if isinstance(mode, Sym):
        args = (source, ("size", like), ("mode", f'"bilinear" if {mode.code} == "bilinear" else "nearest-exact"'))
        args += (("align_corners", f'False if {mode.code} == "bilinear" else None'),)
    elif mode == Lit("bilinear"):
        args = (source, ("size", like), ("mode", '"bilinear"'), ("align_corners", "False"))
    else:
        args = (source, ("size", like), ("mode", '"nearest-exact"'))
    return [Assign(target, Call("F.interpolate", args))], target


def forward_crop(r, node: ir.Crop, env, ch, rank, source: str, target: str):
    """``x = center_crop(x, like)``: the centre, cut to the named tensor's size."""
    return [Assign(target, Call(r.use("center_crop"), (source, r.tensor(node.like))))], target


def _no_children(plan, node, label: str) -> str:
    return ""


def split_widths(r, node: ir.Split, env, ch: Channels) -> list[Channels]:
    """The channels of each part of a split, as the generated code sees them."""
    if node.parts is None:
        sizes = r.value(node, "sizes", env)
        return [Lit(s) for s in sizes.value] if isinstance(sizes, Lit) else [Sym(f"{sizes.code}[{i}]") for i in range(len(node.sizes))]
    parts = r.value(node, "parts", env)
    if isinstance(ch, Lit) and isinstance(parts, Lit):
        return [Lit(ch.value // parts.value)] * parts.value
    return [Sym(f"{term(ch)} // {term(parts)}")] * node.parts


def _split(r, node, env, ch, rank):
    return split_widths(r, node, env, ch)[0], rank


def forward_split(r, node: ir.Split, env, ch, rank, source: str, target: str):
    """``x, b = torch.chunk(x, 2, dim=1)`` / ``torch.split(x, [16, 48], dim=1)``: the first
    part runs on, each other into its name's local (views of the input: not fresh)."""
    for name in node.saves[1:]:
        r.tensor_locals[name] = r.locals.create(name, "tensor")
    targets = ", ".join([target, *(r.tensor_locals[name] for name in node.saves[1:])])
    if node.parts is not None:
        return [Assign(targets, Call("torch.chunk", (source, v.code(r.value(node, "parts", env)), ("dim", "1"))))], target
    sizes = r.value(node, "sizes", env)
    listed = f"[{', '.join(map(str, sizes.value))}]" if isinstance(sizes, Lit) else sizes.code
    return [Assign(targets, Call("torch.split", (source, listed, ("dim", "1"))))], target


# -- channel rules of the combinators ---------------------------------------------------------


def _body(r, node, env, ch, rank):
    return r.effects(node.body, env, ch, rank)


def _branches(r, node, env, ch, rank):
    outs = [r.effects(path, env, ch, rank) for path in node.paths.values()]
    return v.total([c for c, _ in outs]), outs[0][1]


def _repeat(r, node, env, ch, rank):
    after, _, after_rank = r.repeat_channels(node, env, ch, rank)
    return after, after_rank


def _concat(r, node, env, ch, rank):
    read = r.read_channels(node)
    return v.total([c for c, _ in read]), read[0][1]


def _first(r, node, env, ch, rank):
    return r.read_channels(node)[0]


def _call(r, node, env, ch, rank):
    """A block's body, seeing only its own tensors (its inputs, as the call reads them)."""
    outer, r.tensor_channels = r.tensor_channels, r.callee(node, ch, rank)
    try:
        return r.effects(node.body, r.callee_env(node, env), ch, rank)
    finally:
        r.tensor_channels = outer


def _flatten(r, node, env, ch, rank):
    return (r.flat_size(node, ch), 1) if rank == 3 else (ch, 1)


def _global_pool(r, node, env, ch, rank):
    return (ch, 3) if node.keepdims else (ch, 1)


def _depthwise(r, node, env, ch, rank):
    return times(ch, r.value(node, "depth_multiplier", env)), rank


def _residual_fresh(r, node, env) -> bool:
    return r.value(node, "use_shortcut", env) == Lit(True) or fresh_after_sequence(node.body, env, r)


def fresh_after(node: Node, fresh: bool, env: dict[str, Value], renderer) -> bool:
    """Whether the tensor after ``node`` is one that later in-place ops may overwrite:
    made by this sequence, and not read by any backward pass (an activation's is)."""
    if any(name in renderer.read_names for name in node.saves):
        return False  # a later layer reads it by name: nothing may overwrite it
    rule = OPS[node.op].fresh_output
    return rule(renderer, node, env) if callable(rule) else rule


def fresh_after_sequence(nodes: list[Node], env: dict[str, Value], renderer) -> bool:
    fresh = False
    for node in nodes:
        cond = renderer.value(node, "when", env)
        if cond == Lit(False):
            continue
        fresh = fresh_after(node, fresh, env, renderer) and (fresh or not isinstance(cond, Sym))
    return fresh


def _label(plan, node, label: str) -> str:
    """A shortcut's or a branch path's layers: ``shortcut_conv1``, ``b3x3_unit1``."""
    return f"{plan.ident[f'{node.path}:{label}']}_"


def _own(plan, node, label: str) -> str:
    """A residual's body: the enclosing scope's own layers."""
    return "" if label == "body" else _label(plan, node, label)


PADDED = ("Conv2dSame", "conv2d", "conv_padding")


def _no_bias(node: Node) -> str:
    return "" if node.bias else ", bias=False"


def pointwise_classifier(node: ir.Conv) -> str | None:
    """A 1x1 conv classifier (MobileNet's, on the pooled 1x1 map)."""
    plain = node.kernel == (1, 1) and node.stride == (1, 1) and node.groups == 1 and not {"kernel", "stride", "groups"} & set(node.refs)
    return f"nn.Conv2d(width, num_classes, 1{_no_bias(node)})" if plain else None


OPS: dict[str, TorchOp] = {
    "conv": TorchOp(
        emit_conv, to("filters"), weights=CONV_WEIGHTS, fold_into="", fresh_output=True, helpers=PADDED, classifier=pointwise_classifier
    ),
    "depthwise": TorchOp(
        emit_depthwise,
        _depthwise,
        weights=TorchWeights(module_weights, {"kernel": depthwise_to_neutral}, {"kernel": depthwise_from_neutral}),
        fold_into="",
        fresh_output=True,
        helpers=PADDED,
    ),
    "sepconv": TorchOp(
        emit_sepconv,
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
        emit_bn,
        weights=TorchWeights(lambda m: norm_weights(m) | {"moving_mean": m.running_mean, "moving_variance": m.running_var}),
        fresh_output=True,
        helpers=("KerasBatchNorm2d", "KerasBatchNorm1d"),
    ),
    "layer_norm": TorchOp(emit_layernorm, weights=TorchWeights(norm_weights), fresh_output=True, helpers=("LayerNorm2d",)),
    "layer_scale": TorchOp(emit_layerscale, weights=TorchWeights(lambda m: {"gamma": m.gamma}), helpers=("LayerScale",)),
    "act": TorchOp(emit_act, helpers=("activation",)),
    "identity": TorchOp(emit_identity),
    "zero_pad": TorchOp(emit_zeropad, fresh_output=True, helpers=("zero_padding",)),
    "rescale": TorchOp(emit_rescale, helpers=("Rescaling",)),
    "normalize": TorchOp(
        emit_normalize,
        weights=TorchWeights(lambda m: {"mean": m.mean, "variance": m.variance, "count": m.count}),
        helpers=("Normalization",),
    ),
    "maxpool": TorchOp(emit_maxpool, fresh_output=True, helpers=("MaxPool2dSame", "max_pool2d")),
    "avgpool": TorchOp(emit_avgpool, fresh_output=True, helpers=("AvgPool2dSame", "avg_pool2d")),
    "global_avg_pool": TorchOp(emit_globalavgpool, _global_pool, fresh_output=True),
    "flatten": TorchOp(emit_flatten, _flatten, helpers=("FlattenHWC",)),  # a view: not fresh
    "dense": TorchOp(
        emit_dense,
        to("units", 1),
        weights=TorchWeights(module_weights, {"kernel": transpose}, {"kernel": transpose}),
        fold_into="",
        fresh_output=True,
        classifier=lambda node: f"nn.Linear(width, num_classes{_no_bias(node)})",
    ),
    "channel_dense": TorchOp(
        emit_channeldense,
        to("units"),
        weights=TorchWeights(
            module_weights, {"kernel": lambda a, inst: a[:, :, 0, 0].T}, {"kernel": lambda a, inst: a.T[:, :, None, None]}
        ),
        classifier=lambda node: f"nn.Conv2d(width, num_classes, 1{_no_bias(node)})",
    ),
    "dropout": TorchOp(emit_dropout),  # the identity in eval: not fresh
    "drop_path": TorchOp(emit_droppath, helpers=("DropPath",)),
    "upsample": TorchOp(emit_upsample, fresh_output=True),
    "conv_transpose": TorchOp(
        emit_convtranspose,
        to("filters"),
        weights=TorchWeights(module_weights, {"kernel": transposed_to_neutral}, {"kernel": transposed_from_neutral}),
        fresh_output=True,
        helpers=("ConvTranspose2dSame",),
    ),
    "global_max_pool": TorchOp(emit_globalmaxpool, _global_pool, fresh_output=True),
    "resize": TorchOp(None, keep, forward_resize, _no_children, fresh_output=True),
    "crop": TorchOp(None, keep, forward_crop, _no_children, helpers=("center_crop",)),  # a view: not fresh
    "add": TorchOp(None, _first, forward_add, _no_children, fresh_output=True),
    "multiply": TorchOp(None, _first, forward_multiply, _no_children, fresh_output=True),
    "concat": TorchOp(None, _concat, forward_concat, _no_children, fresh_output=True),
    "split": TorchOp(None, _split, forward_split, _no_children),  # views: not fresh
    "residual": TorchOp(None, _body, forward_residual, _own, fresh_output=_residual_fresh),
    "gate": TorchOp(None, keep, forward_gate, lambda plan, node, label: f"{plan.ident[node.path]}_"),  # a product: not fresh
    "branches": TorchOp(None, _branches, forward_branches, _label, fresh_output=True),
    "repeat": TorchOp(
        emit_repeat,
        _repeat,
        runs=True,
        fresh_output=lambda r, node, env: fresh_after_sequence(node.body, {**env, expr.INDEX: Lit(0)}, r),
    ),
    "call": TorchOp(
        emit_call,
        _call,
        nested=True,
        fresh_output=lambda r, node, env: fresh_after_sequence(node.body, r.callee_env(node, env), r),
    ),
}
