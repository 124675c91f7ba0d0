"""The IR: a small closed set of ops, each a frozen pydantic model with explicit fields.

Every framework convention that changes numbers is a field here (padding rule, BN epsilon
and momentum, which BN parameters exist, conv bias), never a silent backend default.
BN ``momentum`` uses the Keras meaning: the fraction of the running value that is kept.

An op is the unit of change: its class holds every fact about it that needs no framework:
its fields (the schema), its shape rule (``infer``), its weights (``roles``, from which
parameter counts follow), its multiply-adds (``macs``), its one-value form
(``shorthand``), its box in ``archc graph`` (``diagram_label``, ``fill``), whether a batch
norm after it folds into it (``fold_role``) and ``archc verify``'s random weights for it
(``random_weights``, ``mean_square``); a combinator also says which sub-sequences it has
(``children``). The passes and tools iterate and ask the node; they never switch on its
type (tests/test_op_records.py). Each backend keeps one record per op (``OPS`` in its
render module). See docs/adding-an-op.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from archc.ir.recipe import Training
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError, did_you_mean, show

PositiveInt = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=1_000_000)]
StrictBool = Annotated[bool, Field(strict=True)]
Padding = Literal["same", "valid"]
Activation = Literal["relu", "relu6", "elu", "sigmoid", "tanh", "silu", "swish", "gelu", "hard_sigmoid", "hard_swish", "softmax"]
Shape = tuple[int, ...]  # (H, W, C) for feature maps, (F,) for vectors
Run = Callable[
    ..., Shape
]  # run(sequence, shape[, repeat index]) -> the sequence's output shape; run.tensor(name) -> a named tensor's shape
TensorName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)]


def _pair(value: Any) -> Any:
    """Kernel/stride/pool sizes: an int k means (k, k); a 2-list [h, w] means (h, w)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list) and len(value) == 2:
        return tuple(value)
    return value


def _margins(value: Any) -> Any:
    """Zero padding: p (all sides), [h, w] (top = bottom = h, left = right = w), or
    [[top, bottom], [left, right]], as Keras's ZeroPadding2D takes it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ((value, value), (value, value))
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ((value[0], value[0]), (value[1], value[1]))
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) and len(v) == 2 for v in value):
        return tuple(tuple(v) for v in value)
    raise ValueError(MARGINS)


MARGINS = "an integer, a list [height, width] or [[top, bottom], [left, right]] of integers >= 0"


Pair = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(_pair)]
Margins = Annotated[tuple[tuple[NonNegativeInt, NonNegativeInt], tuple[NonNegativeInt, NonNegativeInt]], BeforeValidator(_margins)]


PLAIN = "a number, a text, true/false, null or a list of them"


def plain(value: Any) -> Any:
    """Values a spec passes around whole (param defaults and choices, block arguments)
    are what generated code can write as a literal; ValueError for anything else."""
    if isinstance(value, list):
        for item in value:
            plain(item)
        return value
    if value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError(PLAIN)


Plain = Annotated[Any, AfterValidator(plain)]
Segments = Literal["depthwise"] | PositiveInt


def fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


class Where(BaseModel):
    """Where a node was written: for error messages of later passes."""

    model_config = ConfigDict(frozen=True)
    file: str = "<ir>"
    line: int = 1
    col: int = 1
    spec_path: str = ""


class Node(BaseModel):
    """Fields every node has. ``path`` is unique in the network ('entry/down1/sepconv1');
    ``refs`` names the param or block argument a field was written as ($name), so that
    backends can emit the symbol instead of its value; ``when`` false keeps the node in
    the IR (a backend renders the condition) but removes it from shapes and counts.

    The methods are an op's behaviour, with the defaults of an op that keeps its input's
    shape and has no weights (an activation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    path: str = ""
    when: StrictBool = True
    refs: dict[str, str] = Field(default_factory=dict)
    where: Where = Field(default_factory=Where)
    reads: tuple[TensorName, ...] = ()  # `from:` the named tensors it reads (none: the previous layer's output)
    saves: tuple[TensorName, ...] = ()  # `as:` the names later layers read its output(s) by
    bound: dict[str, Any] = Field(default_factory=dict)  # a `when:` over tensor shapes: the other names it reads, resolved

    frozen_roles: ClassVar[frozenset[str]] = frozenset()  # weights that are not trained (BN statistics)
    indexed: ClassVar[bool] = False  # whether the children's instance keys carry an index (a repeat's)
    shorthand: ClassVar[str | None] = None  # the field that the one-value form `op: value` sets (`act: relu`)
    shorthand_list: ClassVar[bool] = False  # whether that one value may be a list (zero_pad's margins)
    fill: ClassVar[str] = "#ffffff"  # the colour of its box in `archc graph`
    fold_role: ClassVar[str | None] = None  # the role whose output channels a batch norm right after it folds into
    folds: ClassVar[bool] = False  # a batch norm: folds into a producer (an op with a fold_role) before it
    merges: ClassVar[bool] = False  # reads two or more tensors (add, concat, multiply): its rule is ``merge``
    closed: ClassVar[bool] = False  # its sub-sequences see only the names ``binds`` gives them (a block's body)
    pools_globally: ClassVar[bool] = False  # the feature maps end here (archc.passes.taps)
    splits: ClassVar[bool] = False  # makes several tensors (``pieces``), one per name of its as:
    pads: ClassVar[bool] = False  # a zero padding: a layer right after it that ``takes_padding`` may pad its own input instead

    def children(self) -> list[tuple[str, list[Node]]]:
        """A combinator's labelled sub-sequences (an op has none)."""
        return []

    def running(self) -> list[tuple[str, list[Node]]]:
        """The sub-sequences that run and count (a dropped shortcut does not)."""
        return self.children()

    def infer(self, shape: Shape, run: Run) -> Shape:
        """The output shape for an input ``shape``, or a located error (``self.fail``);
        ``run(seq, shape)`` infers a sub-sequence, ``run(seq, shape, i)`` iteration i
        of a repeat's body."""
        return shape

    def merge(self, shapes: list[Shape]) -> Shape:
        """A merge op's output shape for the shapes of the tensors it reads (in order)."""
        raise self.fail(f"expected one input tensor for '{self.op}', found {len(shapes)}")

    def sizes_from(self) -> tuple[str, ...]:
        """Named tensors whose shape (not values) it reads besides its input (a resize's ``like``)."""
        return ()

    def binds(self) -> tuple[str, ...]:
        """The names its sub-sequences start with, bound to the tensors it reads (a block's
        ``inputs``), where it is ``closed``."""
        return ()

    def pieces(self, shape: Shape) -> list[Shape]:
        """The shapes of the several tensors it makes from an input ``shape``, which its
        ``as:`` names in order (a split; none: one output, ``infer``'s)."""
        return []

    def results(self) -> tuple[str, ...]:
        """The names, inside its sub-sequence, of the tensors it returns (a block's
        ``outputs:``; none: its output is the sub-sequence's last)."""
        return ()

    def roles(self, inp: Shape) -> dict[str, Shape]:
        """Weight role -> shape, in the neutral (Keras) layout; counts follow from these."""
        return {}

    def macs(self, inp: Shape, out: Shape) -> int:
        """Multiply-adds of one run (convolutions and dense layers; others count none)."""
        return 0

    def repeats(self) -> int:
        """How often the sub-sequences run (a repeat's count)."""
        return 1

    def label(self) -> str:
        """What the parameter table calls the node."""
        return self.op

    def diagram_label(self) -> str | None:
        """What its box in `archc graph` says (None: the op's name and its non-default fields)."""
        return None

    def in_code(self) -> bool:
        """Whether the generated code has it: on, or switched by a param or block argument
        (``when: false`` written as a literal leaves it, and all inside it, out)."""
        return bool(self.when) or "when" in self.refs

    def swaps_before_pointwise(self) -> bool:
        """Whether it may run after a 1x1 conv right after it instead (an average pool of
        stride 1: both are linear per pixel; archc.passes.fold)."""
        return False

    def pointwise(self) -> bool:
        """Whether it is a 1x1, stride-1 conv (that a pool before it may swap with)."""
        return False

    def takes_padding(self, pad: Node, before: Node | None) -> bool:
        """Whether the zero padding ``pad`` right before it (equal on both sides of each
        axis; ``before``: the layer before the pad, which feeds it) may be its own padding
        instead (a 'valid' conv: torch's ``padding=`` pads both sides alike, inside the
        convolution, without a padded copy; archc.passes.fold)."""
        return False

    def nonnegative(self) -> bool:
        """Whether its output is never negative, whatever its input (a relu): a max pool's
        zero padding after it is torch's -inf padding."""
        return False

    def symmetric(self) -> bool:
        """A zero padding's: whether it pads both sides of each axis alike, for every value
        of the generated code (a padding a param or argument sets is checked as it is built)."""
        return False

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        """``archc verify``'s random weights for each role, and the mean square of the
        output, for an input of mean square ``m2`` (``draw``: archc.tools.verify.Draw).
        By default a normalisation's: scales and variances near one (times the input's
        mean square), means and offsets small; it gives outputs of mean square one."""
        shapes = self.roles(inp)
        arrays = draw.bias(shapes)
        for role, shape in shapes.items():
            if role in ("gamma", "variance", "moving_variance"):
                arrays[role] = draw.around_one(shape) * (m2 if "variance" in role else 1.0)
            elif role in ("moving_mean", "mean", "beta"):
                arrays[role] = draw.normal(shape, draw.spread * (m2**0.5 if "mean" in role else 1.0))
            elif role == "count":
                arrays[role] = draw.zeros(shape)
            elif role not in arrays:
                arrays[role] = draw.around_one(shape)
        return arrays, 1.0 if any("variance" in role for role in shapes) else m2

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        """The mean square of the output, for verify's random weights: ``m2`` after the
        node's own weights, ``parts`` the (mean square, channels) of each sequence that
        runs (a combinator's; by default the last one's passes on)."""
        return parts[-1][0] if parts else m2

    def fail(self, message: str) -> SpecError:
        w = self.where
        return SpecError(Location(w.file, w.line, w.col, w.spec_path), message)


SYSTEM_FIELDS = frozenset({"path", "refs", "where", "op", "reads", "saves", "bound"})


def spatial(
    node: Node, shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], padding: str, dilation: tuple[int, int] = (1, 1)
) -> tuple[int, int]:
    """TF/Keras output size: 'same' is ceil(n / s); 'valid' needs the window (a dilated
    kernel spans (k - 1) * d + 1 pixels) to fit."""
    feature_map(node, shape)
    if dilation != (1, 1) and stride != (1, 1):
        raise node.fail(f"expected stride 1 with dilation {fmt(dilation)} (as Keras has it), found stride {fmt(stride)}")
    kernel = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    if padding == "same":
        return tuple(math.ceil(n / s) for n, s in zip(shape[:2], stride))
    if kernel[0] > shape[0] or kernel[1] > shape[1]:
        raise node.fail(f"expected a window no larger than its {fmt(shape[:2])} input with 'valid' padding, found {fmt(kernel)}")
    return tuple((n - k) // s + 1 for n, k, s in zip(shape[:2], kernel, stride))


def feature_map(node: Node, shape: Shape) -> Shape:
    if len(shape) != 3:
        raise node.fail(f"expected a feature map (height x width x channels) as input to '{node.op}', found a vector of {shape[0]}")
    return shape


def _bias(node: Node, units: int) -> dict[str, Shape]:
    return {"bias": (units,)} if node.bias else {}


def _kernel(node: Node, inp: Shape, m2: float, draw: Any, fan_in: Callable[[Shape], int]) -> tuple[dict[str, Any], float]:
    """Random weights of a linear map: the kernel scaled by its fan-in and the input's mean square."""
    shapes = node.roles(inp)
    return draw.bias(shapes) | {"kernel": draw.kernel(shapes["kernel"], fan_in(shapes["kernel"]), m2)}, draw.linear_output


def _stride(pair: tuple[int, int] | None) -> str:
    if pair is None or pair == (1, 1):
        return ""
    return f", stride {pair[0] if pair[0] == pair[1] else fmt(pair)}"


def _dilation(pair: tuple[int, int]) -> str:
    return "" if pair == (1, 1) else f", dilation {pair[0] if pair[0] == pair[1] else fmt(pair)}"


ACTIVATION_TITLES = {"relu": "ReLU", "relu6": "ReLU6", "elu": "ELU", "silu": "SiLU", "gelu": "GELU", "hard_swish": "HardSwish", "hard_sigmoid": "HardSigmoid"}  # fmt: skip


def activation_title(kind: str) -> str:
    return ACTIVATION_TITLES.get(kind, kind.capitalize())


CONV_FILL, NORM_FILL, POOL_FILL = "#dbe8f6", "#eeeeee", "#dcefdc"


# -- ops -------------------------------------------------------------------------------------


class Conv(Node):
    """A 2D convolution; ``groups`` > 1 splits channels into independent groups."""

    op: Literal["conv"] = "conv"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    dilation: Pair = (1, 1)  # a dilated (atrous) kernel: taps d pixels apart
    bias: StrictBool = True
    groups: PositiveInt = 1

    def infer(self, shape: Shape, run: Run) -> Shape:
        c = feature_map(self, shape)[2]
        if c % self.groups or self.filters % self.groups:
            raise self.fail(f"expected groups that divide the {c} input channels and {self.filters} filters, found groups {self.groups}")
        return (*spatial(self, shape, self.kernel, self.stride, self.padding, self.dilation), self.filters)

    def takes_padding(self, pad: Node, before: Node | None) -> bool:
        return self.padding == "valid" and "padding" not in self.refs

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"kernel": (*self.kernel, inp[2] // self.groups, self.filters)} | _bias(self, self.filters)

    def macs(self, inp: Shape, out: Shape) -> int:
        return out[0] * out[1] * self.filters * self.kernel[0] * self.kernel[1] * (inp[2] // self.groups)

    fill: ClassVar[str] = CONV_FILL
    fold_role: ClassVar[str | None] = "kernel"

    def diagram_label(self) -> str:
        groups = f", {self.groups} groups" if self.groups > 1 else ""
        return f"Conv {self.filters}, {fmt(self.kernel)}{_stride(self.stride)}{_dilation(self.dilation)}{groups}"

    def pointwise(self) -> bool:
        return self.kernel == self.stride == (1, 1)

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        return _kernel(self, inp, m2, draw, lambda shape: math.prod(shape[:-1]))


class Depthwise(Node):
    """A depthwise convolution: each input channel convolved on its own into
    ``depth_multiplier`` channels (Keras's DepthwiseConv2D)."""

    op: Literal["depthwise"] = "depthwise"
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    dilation: Pair = (1, 1)  # a dilated (atrous) kernel: taps d pixels apart
    depth_multiplier: PositiveInt = 1
    bias: StrictBool = True

    def infer(self, shape: Shape, run: Run) -> Shape:
        return (*spatial(self, shape, self.kernel, self.stride, self.padding, self.dilation), shape[2] * self.depth_multiplier)

    def takes_padding(self, pad: Node, before: Node | None) -> bool:
        return self.padding == "valid" and "padding" not in self.refs

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"kernel": (*self.kernel, inp[2], self.depth_multiplier)} | _bias(self, inp[2] * self.depth_multiplier)

    def macs(self, inp: Shape, out: Shape) -> int:
        return out[0] * out[1] * out[2] * self.kernel[0] * self.kernel[1]

    fill: ClassVar[str] = CONV_FILL
    fold_role: ClassVar[str | None] = "kernel"  # its last two axes: channels x depth multiplier

    def diagram_label(self) -> str:
        multiplier = f", x{self.depth_multiplier}" if self.depth_multiplier > 1 else ""
        return f"DepthwiseConv {fmt(self.kernel)}{_stride(self.stride)}{_dilation(self.dilation)}{multiplier}"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        return _kernel(self, inp, m2, draw, lambda shape: shape[0] * shape[1])


class SepConv(Node):
    """A spatial conv over ``segments`` channel groups ('depthwise': one per channel),
    an optional activation ``between``, then a 1x1 pointwise conv to ``filters``.
    ``bias`` is on the pointwise conv, as in Keras's SeparableConv2D."""

    op: Literal["sepconv"] = "sepconv"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    dilation: Pair = (1, 1)  # a dilated (atrous) kernel: taps d pixels apart
    depth_multiplier: PositiveInt = 1
    segments: Segments = "depthwise"
    between: Literal["none"] | Activation = "none"
    bias: StrictBool = True

    def infer(self, shape: Shape, run: Run) -> Shape:
        c = feature_map(self, shape)[2]
        if self.segments != "depthwise" and c % self.segments:
            origin = f" (from {expr.spelled(self.refs['segments'])})" if "segments" in self.refs else ""
            raise self.fail(f"expected segments that divide the {c} input channels, found segments {self.segments}{origin}")
        return (*spatial(self, shape, self.kernel, self.stride, self.padding, self.dilation), self.filters)

    def roles(self, inp: Shape) -> dict[str, Shape]:
        cin = inp[2]
        mid = cin * self.depth_multiplier
        if self.segments == "depthwise":
            spatial_ = (*self.kernel, cin, self.depth_multiplier)
        else:
            spatial_ = (*self.kernel, cin // self.segments, mid)
        return {"spatial": spatial_, "pointwise": (1, 1, mid, self.filters)} | _bias(self, self.filters)

    def macs(self, inp: Shape, out: Shape) -> int:
        per_pixel = sum(math.prod(shape) for role, shape in self.roles(inp).items() if role != "bias")
        return out[0] * out[1] * per_pixel

    fill: ClassVar[str] = CONV_FILL
    fold_role: ClassVar[str | None] = "pointwise"

    def diagram_label(self) -> str:
        extra = "" if self.segments == "depthwise" else f", {self.segments} segments"
        extra += f", x{self.depth_multiplier}" if self.depth_multiplier > 1 else ""
        extra += f", {ACTIVATION_TITLES.get(self.between, self.between)} between" if self.between != "none" else ""
        return f"SeparableConv {self.filters}, {fmt(self.kernel)}{_stride(self.stride)}{_dilation(self.dilation)}{extra}"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        """The spatial kernel keeps the scale, the pointwise one sets it (after ``between``)."""
        shapes = self.roles(inp)
        spatial_ = shapes["spatial"]
        fan_in = spatial_[0] * spatial_[1] * (1 if self.segments == "depthwise" else spatial_[2])
        arrays = draw.bias(shapes) | {
            "spatial": draw.kernel(spatial_, fan_in, m2, 1.0),
            "pointwise": draw.kernel(shapes["pointwise"], inp[2] * self.depth_multiplier, draw.squash(self.between)),
        }
        return arrays, draw.linear_output


class BN(Node):
    """Batch normalization over channels. ``center`` adds beta, ``scale`` adds gamma;
    ``momentum`` is the fraction of the running statistics kept at each update."""

    op: Literal["bn"] = "bn"
    center: StrictBool = True
    scale: StrictBool = True
    epsilon: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.99

    frozen_roles: ClassVar[frozenset[str]] = frozenset({"moving_mean", "moving_variance"})
    fill: ClassVar[str] = NORM_FILL
    folds: ClassVar[bool] = True

    def roles(self, inp: Shape) -> dict[str, Shape]:
        ch = (inp[-1],)
        return ({"gamma": ch} if self.scale else {}) | ({"beta": ch} if self.center else {}) | {"moving_mean": ch, "moving_variance": ch}

    def diagram_label(self) -> str:
        return "BN"


class LayerNorm(Node):
    """Layer normalization over the channels of each pixel (or each vector), as Keras's
    LayerNormalization(axis=-1): ``gamma`` if scale, ``beta`` if center."""

    op: Literal["layer_norm"] = "layer_norm"
    epsilon: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    center: StrictBool = True
    scale: StrictBool = True

    fill: ClassVar[str] = NORM_FILL

    def roles(self, inp: Shape) -> dict[str, Shape]:
        ch = (inp[-1],)
        return ({"gamma": ch} if self.scale else {}) | ({"beta": ch} if self.center else {})

    def diagram_label(self) -> str:
        return "LayerNorm"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        return super().random_weights(inp, m2, draw)[0], 1.0  # it normalises without statistics


class LayerScale(Node):
    """Multiply each channel by a trained ``gamma`` that starts at ``init`` (ConvNeXt)."""

    op: Literal["layer_scale"] = "layer_scale"
    init: Annotated[float, Field(gt=0)] = 1e-6

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"gamma": (inp[-1],)}

    def diagram_label(self) -> str:
        return "LayerScale"


class Act(Node):
    op: Literal["act"] = "act"
    kind: Activation

    shorthand: ClassVar[str | None] = "kind"
    fill: ClassVar[str] = "#fdf3d0"

    def diagram_label(self) -> str:
        return activation_title(self.kind)

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        return m2 * draw.squash(self.kind)

    def nonnegative(self) -> bool:
        return "kind" not in self.refs and self.kind in ("relu", "relu6", "sigmoid", "hard_sigmoid", "softmax")


class Identity(Node):
    """The input unchanged: a path of branches that passes its input on (DenseNet)."""

    op: Literal["identity"] = "identity"

    def diagram_label(self) -> str:
        return "Identity"


class ZeroPad(Node):
    """Zero padding around a feature map, ((top, bottom), (left, right)), as Keras's
    ZeroPadding2D: keras.applications pads before a 'valid' strided conv."""

    op: Literal["zero_pad"] = "zero_pad"
    padding: Margins

    shorthand: ClassVar[str | None] = "padding"
    shorthand_list: ClassVar[bool] = True

    def diagram_label(self) -> str:
        (top, bottom), (left, right) = self.padding
        return f"ZeroPad {top if top == bottom == left == right else f'{top},{bottom} x {left},{right}'}"

    pads: ClassVar[bool] = True

    def symmetric(self) -> bool:
        (top, bottom), (left, right) = self.padding
        return "padding" in self.refs or (top == bottom and left == right)

    def infer(self, shape: Shape, run: Run) -> Shape:
        (top, bottom), (left, right) = self.padding
        feature_map(self, shape)
        return (shape[0] + top + bottom, shape[1] + left + right, shape[2])


class Rescale(Node):
    """``x * scale + offset`` (Keras's Rescaling): input preprocessing, no weights."""

    op: Literal["rescale"] = "rescale"
    scale: float
    offset: float = 0.0

    shorthand: ClassVar[str | None] = "scale"

    def diagram_label(self) -> str:
        return f"Rescale x{self.scale:.4g}" + (f" {self.offset:+g}" if self.offset else "")


class Normalize(Node):
    """``(x - mean) / sqrt(variance)`` per channel (Keras's Normalization, axis -1).
    Given ``mean`` and ``variance`` are constants of the model (no weights); without them
    they are non-trainable state (``mean``, ``variance`` and Keras's ``count``) that an
    adapted or imported model fills in."""

    op: Literal["normalize"] = "normalize"
    mean: list[float] | None = None
    variance: list[float] | None = None

    frozen_roles: ClassVar[frozenset[str]] = frozenset({"mean", "variance", "count"})

    def infer(self, shape: Shape, run: Run) -> Shape:
        if (self.mean is None) != (self.variance is None):
            raise self.fail("expected both 'mean' and 'variance' or neither, found one")
        for field in ("mean", "variance"):
            values = getattr(self, field)
            if values is not None and len(values) != shape[-1]:
                raise self.fail(f"expected a '{field}' of {shape[-1]} values (one per channel), found {len(values)}")
        if self.variance is not None and min(self.variance) <= 0:
            raise self.fail(f"expected positive variances, found {min(self.variance)}")
        return shape

    def roles(self, inp: Shape) -> dict[str, Shape]:
        if self.mean is not None:
            return {}
        return {"mean": (inp[-1],), "variance": (inp[-1],), "count": ()}

    def diagram_label(self) -> str:
        return "Normalize"


class MaxPool(Node):
    op: Literal["maxpool"] = "maxpool"
    pool: Pair
    stride: Pair | None = None  # None: the pool size
    padding: Padding = "valid"

    fill: ClassVar[str] = POOL_FILL

    def infer(self, shape: Shape, run: Run) -> Shape:
        return (*spatial(self, shape, self.pool, self.stride or self.pool, self.padding), shape[2])

    def diagram_label(self) -> str:
        return f"{type(self).__name__} {fmt(self.pool)}{_stride(self.stride or self.pool)}"

    def takes_padding(self, pad: Node, before: Node | None) -> bool:
        """Zeros padded after a relu (always there, feeding the pad) never win a window
        that has an input pixel, as torch's -inf padding never does; torch pads at most
        half the window."""
        if self.padding != "valid" or {"padding", "pool"} & set(self.refs) or "padding" in pad.refs or before is None:
            return False
        (top, _), (left, _) = pad.padding
        always = before.when is True and "when" not in before.refs and not pad.reads
        return always and before.nonnegative() and 2 * top <= self.pool[0] and 2 * left <= self.pool[1]


class AvgPool(Node):
    """Average pool; with 'same' padding the padded cells are not counted (TF rule)."""

    op: Literal["avgpool"] = "avgpool"
    pool: Pair
    stride: Pair | None = None
    padding: Padding = "valid"

    fill: ClassVar[str] = POOL_FILL
    infer = MaxPool.infer
    diagram_label = MaxPool.diagram_label

    def swaps_before_pointwise(self) -> bool:
        return (self.stride or self.pool) == (1, 1)


class GlobalAvgPool(Node):
    """The mean over height and width: a vector, or with ``keepdims`` a 1x1 map (the
    squeeze of a squeeze-and-excite gate)."""

    op: Literal["global_avg_pool"] = "global_avg_pool"
    keepdims: StrictBool = False

    fill: ClassVar[str] = POOL_FILL
    pools_globally: ClassVar[bool] = True

    def infer(self, shape: Shape, run: Run) -> Shape:
        c = feature_map(self, shape)[2]
        return (1, 1, c) if self.keepdims else (c,)

    def diagram_label(self) -> str:
        return "GlobalAvgPool"


class Flatten(Node):
    """Flatten a feature map in (H, W, C) order, whatever a backend's layout."""

    op: Literal["flatten"] = "flatten"

    def infer(self, shape: Shape, run: Run) -> Shape:
        return (math.prod(shape),)

    def diagram_label(self) -> str:
        return "Flatten"


class Dense(Node):
    op: Literal["dense"] = "dense"
    units: PositiveInt
    bias: StrictBool = True

    shorthand: ClassVar[str | None] = "units"
    fill: ClassVar[str] = "#f8dfcf"
    fold_role: ClassVar[str | None] = "kernel"

    def infer(self, shape: Shape, run: Run) -> Shape:
        if len(shape) != 1:
            raise self.fail(f"expected a vector as input to 'dense' (add flatten or global_avg_pool), found a {fmt(shape)} feature map")
        return (self.units,)

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"kernel": (inp[0], self.units)} | _bias(self, self.units)

    def macs(self, inp: Shape, out: Shape) -> int:
        return inp[0] * self.units

    def diagram_label(self) -> str:
        return f"Dense {self.units}"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        return _kernel(self, inp, m2, draw, lambda shape: shape[0])


class ChannelDense(Node):
    """A dense layer over the channels of every pixel (Keras's Dense on a feature map,
    as ConvNeXt's pointwise layers are written; a 1x1 conv in another layout)."""

    op: Literal["channel_dense"] = "channel_dense"
    units: PositiveInt
    bias: StrictBool = True

    def infer(self, shape: Shape, run: Run) -> Shape:
        return (*feature_map(self, shape)[:2], self.units)

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"kernel": (inp[2], self.units)} | _bias(self, self.units)

    def macs(self, inp: Shape, out: Shape) -> int:
        return out[0] * out[1] * inp[2] * self.units

    fill: ClassVar[str] = CONV_FILL

    def diagram_label(self) -> str:
        return f"Dense {self.units} (per pixel)"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        return _kernel(self, inp, m2, draw, lambda shape: shape[0])


class Dropout(Node):
    op: Literal["dropout"] = "dropout"
    rate: Annotated[float, Field(ge=0, lt=1)]

    shorthand: ClassVar[str | None] = "rate"

    def diagram_label(self) -> str:
        return f"Dropout {self.rate:g}"


class DropPath(Node):
    """Stochastic depth: in training, drop a whole residual branch per sample with
    probability ``rate`` (and scale the kept ones by 1 / (1 - rate)); the identity in
    inference. It ends a residual's body."""

    op: Literal["drop_path"] = "drop_path"
    rate: Annotated[float, Field(ge=0, lt=1)]

    shorthand: ClassVar[str | None] = "rate"

    def infer(self, shape: Shape, run: Run) -> Shape:
        return feature_map(self, shape)

    def diagram_label(self) -> str:
        return f"DropPath {self.rate:g}"


class Upsample(Node):
    """Each pixel becomes ``factor`` x ``factor``: repeated ('nearest') or interpolated
    ('bilinear', with half-pixel centres: TensorFlow's resize, torch's align_corners=False)."""

    op: Literal["upsample"] = "upsample"
    factor: PositiveInt = 2
    mode: Literal["nearest", "bilinear"] = "nearest"

    shorthand: ClassVar[str | None] = "factor"
    fill: ClassVar[str] = POOL_FILL

    def infer(self, shape: Shape, run: Run) -> Shape:
        h, w, c = feature_map(self, shape)
        return (h * self.factor, w * self.factor, c)

    def diagram_label(self) -> str:
        return f"Upsample x{self.factor}" + (f", {self.mode}" if self.mode != "nearest" else "")


class ConvTranspose(Node):
    """A transposed convolution (Keras's Conv2DTranspose, torch's ConvTranspose2d): each
    input pixel spreads ``kernel`` x ``kernel`` weights over the output, ``stride``
    pixels apart; 'valid' gives (n - 1) * stride + kernel, 'same' n * stride (TF crops
    the (kernel - stride) extra pixels, the odd one at the end)."""

    op: Literal["conv_transpose"] = "conv_transpose"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    bias: StrictBool = True

    fill: ClassVar[str] = CONV_FILL

    def infer(self, shape: Shape, run: Run) -> Shape:
        feature_map(self, shape)
        if any(k < s for k, s in zip(self.kernel, self.stride)):
            raise self.fail(f"expected a kernel no smaller than the stride, found kernel {fmt(self.kernel)} with stride {fmt(self.stride)}")
        if self.padding == "same":
            return (shape[0] * self.stride[0], shape[1] * self.stride[1], self.filters)
        return ((shape[0] - 1) * self.stride[0] + self.kernel[0], (shape[1] - 1) * self.stride[1] + self.kernel[1], self.filters)

    def crop(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) that 'same' cuts off the full transposed conv."""
        if self.padding == "valid":
            return ((0, 0), (0, 0))
        total = [k - s for k, s in zip(self.kernel, self.stride)]
        return tuple((t // 2, t - t // 2) for t in total)

    def roles(self, inp: Shape) -> dict[str, Shape]:
        return {"kernel": (*self.kernel, self.filters, inp[2])} | _bias(self, self.filters)

    def macs(self, inp: Shape, out: Shape) -> int:
        """Every input pixel times every weight (torch's flop counter counts the full
        transposed conv, before the 'same' crop)."""
        return inp[0] * inp[1] * self.kernel[0] * self.kernel[1] * inp[2] * self.filters

    def diagram_label(self) -> str:
        return f"ConvTranspose {self.filters}, {fmt(self.kernel)}{_stride(self.stride)}"

    def random_weights(self, inp: Shape, m2: float, draw: Any) -> tuple[dict[str, Any], float]:
        """Scaled by the weights that reach one output pixel (kernel / stride per axis)."""
        reach = max(1, (self.kernel[0] // self.stride[0]) * (self.kernel[1] // self.stride[1]))
        return _kernel(self, inp, m2, draw, lambda shape: reach * shape[3])


class GlobalMaxPool(Node):
    """The maximum over height and width: a vector, or with ``keepdims`` a 1x1 map."""

    op: Literal["global_max_pool"] = "global_max_pool"
    keepdims: StrictBool = False

    fill: ClassVar[str] = POOL_FILL
    pools_globally: ClassVar[bool] = True
    infer = GlobalAvgPool.infer

    def diagram_label(self) -> str:
        return "GlobalMaxPool"


class Resize(Node):
    """Resize a feature map to the height and width of the named tensor ``like``
    ('nearest', or 'bilinear' with half-pixel centres: TensorFlow's resize, torch's
    align_corners=False); DeepLab's way back to the input size, FPN's top-down path."""

    op: Literal["resize"] = "resize"
    like: TensorName
    mode: Literal["nearest", "bilinear"] = "bilinear"

    shorthand: ClassVar[str | None] = "like"
    fill: ClassVar[str] = POOL_FILL

    def sizes_from(self) -> tuple[str, ...]:
        return (self.like,)

    def infer(self, shape: Shape, run: Run) -> Shape:
        c = feature_map(self, shape)[2]
        h, w = feature_map(self, run.tensor(self.like))[:2]
        return (h, w, c)

    def diagram_label(self) -> str:
        return f"Resize to {self.like}" + (f", {self.mode}" if self.mode != "bilinear" else "")


class Crop(Node):
    """Crop the centre of a feature map to the height and width of the named tensor
    ``like`` (the original U-Net's skip connections), the odd pixel at the end."""

    op: Literal["crop"] = "crop"
    like: TensorName

    shorthand: ClassVar[str | None] = "like"

    def sizes_from(self) -> tuple[str, ...]:
        return (self.like,)

    def infer(self, shape: Shape, run: Run) -> Shape:
        h, w, c = feature_map(self, shape)
        th, tw = feature_map(self, run.tensor(self.like))[:2]
        if th > h or tw > w:
            raise self.fail(f"expected '{self.like}' ({th}x{tw}) no larger than the {h}x{w} map it crops, found it larger")
        return (th, tw, c)

    def margins(self, inp: Shape, out: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) cut off."""
        dh, dw = inp[0] - out[0], inp[1] - out[1]
        return ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))

    def diagram_label(self) -> str:
        return f"Crop to {self.like}"


class Split(Node):
    """The channels cut into consecutive parts, each a tensor that ``as:`` names in
    order: ``parts`` equal ones, or parts of the given ``sizes`` (YOLO's C2f, a
    channel shuffle's halves). No weights, no multiply-adds (torch.split is a view)."""

    op: Literal["split"] = "split"
    parts: Annotated[int, Field(strict=True, ge=2, le=100_000)] | None = None
    sizes: Annotated[list[PositiveInt], Field(min_length=2)] | None = None

    shorthand: ClassVar[str | None] = "parts"
    splits: ClassVar[bool] = True

    def widths(self, channels: int) -> list[int]:
        """The channels of each part."""
        if (self.parts is None) == (self.sizes is None):
            raise self.fail(f"expected 'parts' or 'sizes', found {'both' if self.parts else 'neither'}")
        if self.parts is not None:
            if channels % self.parts:
                raise self.fail(f"expected parts that divide the {channels} channels, found {self.parts}")
            return [channels // self.parts] * self.parts
        if sum(self.sizes) != channels:
            raise self.fail(f"expected sizes that add up to the {channels} channels, found {self.sizes} ({sum(self.sizes)})")
        return list(self.sizes)

    def pieces(self, shape: Shape) -> list[Shape]:
        h, w, c = feature_map(self, shape)
        return [(h, w, part) for part in self.widths(c)]

    def infer(self, shape: Shape, run: Run) -> Shape:
        return self.pieces(shape)[0]

    def diagram_label(self) -> str:
        return f"Split {self.parts}" if self.parts else f"Split {', '.join(map(str, self.sizes or []))}"


def _same_shapes(node: Node, shapes: list[Shape], what: str) -> Shape:
    first = shapes[0]
    for i, shape in enumerate(shapes[1:], start=1):
        if shape != first:
            raise node.fail(
                f"expected tensors of one shape to {what} ('{node.reads[0]}' is {fmt(first)}), found {fmt(shape)} for '{node.reads[i]}'"
            )
    return first


class Merge(Node):
    """An op over two or more named tensors (``from: [a, b]``, written ``add: [a, b]``)."""

    merges: ClassVar[bool] = True
    shorthand: ClassVar[str | None] = "reads"  # `concat: [a, b]` is concat: {from: [a, b]}
    shorthand_list: ClassVar[bool] = True


class Add(Merge):
    """The sum of two or more named tensors of one shape (FPN's top-down path)."""

    op: Literal["add"] = "add"

    def merge(self, shapes: list[Shape]) -> Shape:
        return _same_shapes(self, shapes, "add")

    def diagram_label(self) -> str:
        return "+"

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        return m2 * len(self.reads)  # independent random tensors add their mean squares


class Multiply(Merge):
    """The elementwise product of two or more named tensors of one shape; a 1x1xC
    tensor scales every pixel of the others (an attention gate)."""

    op: Literal["multiply"] = "multiply"

    def merge(self, shapes: list[Shape]) -> Shape:
        full = [s for s in shapes if s[:-1] != (1, 1) or len(s) != 3] or shapes[:1]
        out = full[0]
        for i, shape in enumerate(shapes):
            if shape != out and not (len(shape) == 3 == len(out) and shape == (1, 1, out[2])):
                raise self.fail(
                    f"expected tensors of one shape (or 1x1x{out[-1]}) to multiply, found {fmt(shape)} for '{self.reads[i]}' and {fmt(out)}"
                )
        return out

    def diagram_label(self) -> str:
        return "x"


class Concat(Merge):
    """Named tensors joined along channels, in order (U-Net's skip connections)."""

    op: Literal["concat"] = "concat"

    def merge(self, shapes: list[Shape]) -> Shape:
        first = shapes[0]
        for i, shape in enumerate(shapes):
            if len(shape) != len(first) or shape[:-1] != first[:-1]:
                raise self.fail(
                    f"expected tensors that agree except in channels to concatenate ('{self.reads[0]}' is {fmt(first)}), "
                    f"found {fmt(shape)} for '{self.reads[i]}'"
                )
        return (*first[:-1], sum(s[-1] for s in shapes))

    def diagram_label(self) -> str:
        return "Concat"


# -- combinators -----------------------------------------------------------------------------


class Combinator(Node):
    """A node with sub-sequences. Its class also says how a spec writes it: the
    classmethod ``parse(layer, resolver)`` turns the layer's mapping into the node, and
    (for the combinators a spec names, COMBINATORS) ``layer_schema(parts)`` is that
    mapping's JSON Schema. ``resolver`` is an archc.ir.layers.Layers, ``layer`` its
    Written (the fields as written, where, the scope, what every node gets); ``parts``
    is archc.ir.schema.Parts, the schema's shared pieces. Those modules import this one."""

    @classmethod
    def short_form(cls, value: Any) -> Any:
        """The layer's value with a short form (not a mapping of fields) written out."""
        return value


class Residual(Combinator):
    """``body(x) + shortcut(x)``; no shortcut layers means the identity.
    ``use_shortcut`` false drops the addition and the shortcut layers (an ablation)."""

    op: Literal["residual"] = "residual"
    body: list[Layer] = Field(min_length=1)
    shortcut: list[Layer] = Field(default_factory=list)
    use_shortcut: StrictBool = True

    def children(self) -> list[tuple[str, list[Node]]]:
        return [("body", self.body), ("shortcut", self.shortcut)]

    def running(self) -> list[tuple[str, list[Node]]]:
        return self.children() if self.use_shortcut else [("body", self.body)]

    @classmethod
    def parse(cls, layer: Any, resolver: Any) -> Residual:
        resolver.check_fields(cls, layer)
        use = resolver.field(layer, "use_shortcut", True)
        body = resolver.sequence(layer.fields.get("body"), layer.at("body"), layer.inner("body"))
        short = layer.fields.get("shortcut")
        shortcut = [] if short is None else resolver.sequence(short, layer.at("shortcut"), layer.inner("shortcut"))
        return resolver.build(cls, layer.node(body=body, shortcut=shortcut, use_shortcut=use), layer)

    @classmethod
    def layer_schema(cls, parts: Any) -> dict[str, Any]:
        return parts.mapping(cls, body=parts.layers, shortcut=parts.layers, use_shortcut=parts.written({"type": "boolean"}))

    def infer(self, shape: Shape, run: Run) -> Shape:
        out = run(self.body, shape)
        if self.use_shortcut:
            short = run(self.shortcut, shape)
            if out != short:
                which = "shortcut" if self.shortcut else "identity shortcut"
                raise self.fail(f"expected the residual body's output to match its {which} ({fmt(short)}), found {fmt(out)}")
        return out

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        return sum(p for p, _ in parts)  # independent random parts add their mean squares


class Gate(Combinator):
    """``x * body(x)``: the body (a squeeze-and-excite: global_avg_pool with keepdims,
    1x1 convs, a sigmoid) ends in one value per channel, broadcast over the map."""

    op: Literal["gate"] = "gate"
    body: list[Layer] = Field(min_length=1)

    def children(self) -> list[tuple[str, list[Node]]]:
        return [("body", self.body)]

    def infer(self, shape: Shape, run: Run) -> Shape:
        c = feature_map(self, shape)[2]
        out = run(self.body, shape)
        if out != (1, 1, c):
            raise self.fail(f"expected the gate's body to end in one value per channel (1x1x{c}), found {fmt(out)}")
        return shape

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        return m2 * draw.squash("sigmoid")

    @classmethod
    def short_form(cls, value: Any) -> Any:
        """``gate: [layers]`` is ``gate: {body: [layers]}``."""
        return {"body": value} if isinstance(value, list) else value

    @classmethod
    def parse(cls, layer: Any, resolver: Any) -> Gate:
        resolver.check_fields(cls, layer)
        body = resolver.sequence(layer.fields.get("body"), layer.at("body"), layer.inner("body"))
        return resolver.build(cls, layer.node(body=body), layer)

    @classmethod
    def layer_schema(cls, parts: Any) -> dict[str, Any]:
        return {"anyOf": [parts.layers, parts.mapping(cls, body=parts.layers)]}


class Branches(Combinator):
    """Parallel paths over the same input, concatenated on channels in order."""

    op: Literal["branches"] = "branches"
    paths: dict[str, list[Layer]] = Field(min_length=2)

    def children(self) -> list[tuple[str, list[Node]]]:
        return list(self.paths.items())

    def infer(self, shape: Shape, run: Run) -> Shape:
        outs = {name: run(layers, shape) for name, layers in self.paths.items()}
        first_name, first = next(iter(outs.items()))
        for name, out in outs.items():
            if out[:-1] != first[:-1] or len(out) != len(first):
                raise self.fail(
                    f"expected branches to agree except in channels (path '{first_name}' gives {fmt(first)}), found {fmt(out)} from path '{name}'"
                )
        return (*first[:-1], sum(out[-1] for out in outs.values()))

    def mean_square(self, m2: float, parts: list[tuple[float, int]], draw: Any) -> float:
        return sum(p * c for p, c in parts) / sum(c for _, c in parts)  # the channels' average

    @classmethod
    def short_form(cls, value: Any) -> Any:
        """``branches: [[layers], ...]`` or ``branches: {name: [layers], ...}`` is
        ``branches: {paths: ...}``; a list's paths are named branch1, branch2, ..."""
        if isinstance(value, (list, dict)) and not (isinstance(value, dict) and "paths" in value):
            return {"paths": value}
        return value

    @classmethod
    def parse(cls, layer: Any, resolver: Any) -> Branches:
        resolver.check_fields(cls, layer)
        raw = layer.fields.get("paths")
        if isinstance(raw, list):
            raw = {f"branch{i + 1}": layers for i, layers in enumerate(raw)}
            keys = {name: i for i, name in enumerate(raw)}
        else:
            keys = {name: name for name in raw} if isinstance(raw, dict) else {}
        if not isinstance(raw, dict) or len(raw) < 2:
            message = "expected at least two paths (a list of layer lists, or a mapping of names to them)"
            raise resolver.error(layer.key, f"{message}, found {show(layer.fields.get('paths'))}", via=layer.scope.via)
        paths = {p: resolver.sequence(layers, layer.at("paths") + (keys[p],), layer.inner(p)) for p, layers in raw.items()}
        return resolver.build(cls, layer.node(paths=paths), layer)

    @classmethod
    def layer_schema(cls, parts: Any) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "array", "items": parts.layers, "minItems": 2},
                {"type": "object", "additionalProperties": parts.layers, "minProperties": 2},
                parts.mapping(cls, paths={}),
            ]
        }


class Repeat(Combinator):
    """``body`` applied ``times`` times in sequence, each with its own weights; the body
    may change the shape (DenseNet's growing channels): each run sees the last's output."""

    op: Literal["repeat"] = "repeat"
    indexed: ClassVar[bool] = True
    times: Annotated[int, Field(strict=True, ge=1, le=10_000)]
    body: list[Layer] = Field(min_length=1)

    def children(self) -> list[tuple[str, list[Node]]]:
        return [("body", self.body)]

    def infer(self, shape: Shape, run: Run) -> Shape:
        for i in range(self.times):
            shape = run(self.body, shape, i)
        return shape

    def repeats(self) -> int:
        return self.times

    @classmethod
    def parse(cls, layer: Any, resolver: Any) -> Repeat:
        """``{times, body}``: the body once, at index 0 (the resolver checks that the
        other iterations agree with it where it reads the index)."""
        resolver.check_fields(cls, layer)
        times = resolver.field(layer, "times")
        if type(times) is not int or not 1 <= times <= 10_000:
            ref = layer.refs.get("times")
            found = show(times) + (f" (from {expr.spelled(ref)})" if ref else "")
            raise resolver.error(layer.at("times"), f"expected a repeat count from 1 to 10000, found {found}", via=layer.scope.via)
        body = resolver.iterations(layer, times)
        return resolver.build(cls, layer.node(times=times, body=body), layer)

    @classmethod
    def layer_schema(cls, parts: Any) -> dict[str, Any]:
        return parts.mapping(cls, times=parts.written({"type": "integer", "minimum": 1, "maximum": 10000}), body=parts.layers)


class Call(Combinator):
    """An instance of a block definition; ``body`` is the definition resolved with
    ``args``. Kept as a node so that backends emit one class/function per block."""

    op: Literal["call"] = "call"
    block: str
    args: dict[str, Plain] = Field(default_factory=dict)
    body: list[Layer] = Field(min_length=1)
    tensors: tuple[TensorName, ...] = ()  # the block's tensor inputs, bound to what the call reads
    returns: tuple[TensorName, ...] = ()  # the body's tensors it returns, named by the call's as: in order

    closed: ClassVar[bool] = True

    def children(self) -> list[tuple[str, list[Node]]]:
        return [("body", self.body)]

    def binds(self) -> tuple[str, ...]:
        return self.tensors

    def results(self) -> tuple[str, ...]:
        return self.returns

    def infer(self, shape: Shape, run: Run) -> Shape:
        return run(self.body, shape)

    def label(self) -> str:
        return self.block

    @classmethod
    def parse(cls, layer: Any, resolver: Any) -> Call:
        """``{block: {argument: value}}``: the arguments checked against the block's
        (defaults filled in), the body its definition resolved with them."""
        block, scope = layer.kind, layer.scope
        if block in scope.stack:
            chain = " -> ".join(scope.stack + (block,))
            raise resolver.error(layer.key, f"expected blocks that do not call themselves, found {chain}", via=scope.via)
        declared = resolver.blocks[block][0]

        def reject(arg: str) -> str:
            if arg in declared:
                return ""
            return f"expected an argument of block '{block}' ({', '.join(declared) or 'none'}), found '{arg}'{did_you_mean(arg, declared)}"

        args = resolver.values(layer.fields, layer.key, scope, layer.refs, reject)
        for arg, default in declared.items():
            if arg not in args:
                if default is None:
                    raise resolver.error(layer.key, f"expected a value for argument '{arg}' of block '{block}', found none", via=scope.via)
                args[arg] = default
        tensors = resolver.blocks[block][3]
        reads = layer.common["reads"]
        if len(reads) > max(len(tensors), 1):
            wanted = f"the block's inputs {', '.join(tensors)}" if tensors else "one tensor (block '" + block + "' declares no inputs:)"
            raise resolver.error(layer.at("from"), f"expected {wanted}, found {len(reads)} names", via=scope.via)
        if tensors and len(reads) != len(tensors):
            raise resolver.error(
                layer.at("from") if reads else layer.key,
                f"expected from: with a tensor for each input of block '{block}' ({', '.join(tensors)}), found {len(reads)}",
                via=scope.via,
            )
        returns = resolver.blocks[block][4]
        saves = layer.common["saves"]
        if len(returns) > 1 and len(saves) != len(returns):
            raise resolver.error(
                layer.at("as") if saves else layer.key,
                f"expected as: with a name for each output of block '{block}' ({', '.join(returns)}), found {len(saves)}",
                via=scope.via,
            )
        body = resolver.expand(block, args, layer)
        node = layer.node(block=block, args=args, body=body, tensors=tensors, returns=returns)
        return resolver.build(cls, node, layer, {"args": layer.key})


OP_CLASSES = (
    Conv, Depthwise, SepConv, BN, LayerNorm, LayerScale, Act, Identity, ZeroPad, Rescale, Normalize,
    MaxPool, AvgPool, GlobalAvgPool, Flatten, Dense, ChannelDense, Dropout, DropPath, Upsample,
    GlobalMaxPool, Resize, Crop, Add, Multiply, Concat, ConvTranspose, Split,
)  # fmt: skip
COMBINATOR_CLASSES = (Residual, Gate, Branches, Repeat)
Layer = Annotated[Conv | Depthwise | SepConv | BN | LayerNorm | LayerScale | Act | Identity | ZeroPad | Rescale | Normalize | MaxPool | AvgPool | GlobalAvgPool | Flatten | Dense | ChannelDense | Dropout | DropPath | Upsample | GlobalMaxPool | Resize | Crop | Add | Multiply | Concat | ConvTranspose | Split | Residual | Gate | Branches | Repeat | Call, Field(discriminator="op")]  # fmt: skip

OPS: dict[str, type[Node]] = {cls.model_fields["op"].default: cls for cls in OP_CLASSES}
COMBINATORS: dict[str, type[Node]] = {cls.model_fields["op"].default: cls for cls in COMBINATOR_CLASSES}
# op -> the field its one-value form sets (`act: relu` means {kind: relu}), from the classes
SHORTHAND = {op: cls.shorthand for op, cls in OPS.items() if cls.shorthand}
SHORTHAND_LISTS = frozenset(op for op, cls in OPS.items() if cls.shorthand_list)  # shorthands whose value may be a list

for _cls in (*COMBINATOR_CLASSES, Call):
    _cls.model_rebuild()


class Param(BaseModel):
    """A declared spec parameter: a typed default the command line may override."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    type: Literal["int", "float", "bool", "str", "segments"]
    default: Plain
    choices: list[Plain] | None = None
    min: float | None = None
    max: float | None = None
    doc: str = ""


class BlockDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    args: dict[str, Plain]  # name -> default (None: required)
    doc: str = ""
    inputs: tuple[TensorName, ...] = ()  # named tensor inputs (none: one, the caller's current tensor)
    outputs: tuple[TensorName, ...] = ()  # the body's tensors it returns (none: its last layer's output)


class Expect(BaseModel):
    """Counts a spec promises; ``archc check`` compares them with the computed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trainable: Annotated[int, Field(strict=True, ge=0)] | None = None
    non_trainable: Annotated[int, Field(strict=True, ge=0)] | None = None
    macs: Annotated[int, Field(strict=True, ge=0)] | None = None
    output: list[PositiveInt] | None = None


class Network(BaseModel):
    """A resolved spec: params substituted, blocks expanded into Call nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    file: str
    description: str = ""
    input: tuple[PositiveInt, PositiveInt, PositiveInt]
    input_refs: dict[int, str] = Field(default_factory=dict)  # input position -> its expression
    params: dict[str, Any]
    param_decls: dict[str, Param]
    blocks: dict[str, BlockDef]
    flows: dict[str, list[Layer]]
    outputs: dict[TensorName, TensorName] = Field(default_factory=dict)  # output name -> tensor (none: the last layer's)
    output_where: dict[str, Where] = Field(default_factory=dict)  # output name -> where outputs: names it
    output_when: dict[str, tuple[bool, str]] = Field(default_factory=dict)  # output name -> (on, the $param that switches it)

    def active_outputs(self) -> dict[str, str]:
        """The outputs that are on at these params (output name -> tensor)."""
        return {name: tensor for name, tensor in self.outputs.items() if self.output_when.get(name, (True, ""))[0]}

    expect: Expect | None = None
    training: Training | None = None


def children(node: Node) -> list[tuple[str, list[Node]]]:
    """The labelled sub-sequences of a node (see ``Node.children``)."""
    return node.children()


def tensor_reads(net: Network) -> set[str]:
    """The tensor names that some layer reads (``from:``, a resize's ``like``, a ``when:``
    over their sizes), a block returns or an output names."""
    nodes = [node for layers in net.flows.values() for node in walk(layers)]
    sized = {n for node in nodes if "when" in node.refs for n in expr.tensors(expr.parse(node.refs["when"]))}
    return {n for node in nodes for n in (*node.reads, *node.sizes_from(), *node.results())} | sized | set(net.outputs.values())


def walk(layers: list[Node]):
    """Every node below ``layers``, parents first."""
    for node in layers:
        yield node
        for _, seq in node.children():
            yield from walk(seq)
