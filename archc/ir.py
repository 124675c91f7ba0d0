"""The IR: a small closed set of ops, each a frozen pydantic model with explicit fields.

Every framework convention that changes numbers is a field here (padding rule, BN epsilon
and momentum, which BN parameters exist, conv bias), never a silent backend default.
BN ``momentum`` uses the Keras meaning: the fraction of the running value that is kept.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .training import Training

PositiveInt = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
StrictBool = Annotated[bool, Field(strict=True)]
Padding = Literal["same", "valid"]
Activation = Literal["relu", "relu6", "elu", "sigmoid", "tanh", "silu", "gelu", "softmax"]
Shape = tuple[int, ...]  # (H, W, C) for feature maps, (F,) for vectors


def _pair(value: Any) -> Any:
    """Kernel/stride/pool sizes: an int k means (k, k); a 2-list [h, w] means (h, w)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list) and len(value) == 2:
        return tuple(value)
    return value


Pair = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(_pair)]
Segments = Literal["depthwise"] | PositiveInt


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
    the IR (a backend renders the condition) but removes it from shapes and counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    path: str = ""
    when: StrictBool = True
    refs: dict[str, str] = Field(default_factory=dict)
    where: Where = Field(default_factory=Where)


SYSTEM_FIELDS = frozenset({"path", "refs", "where", "op"})


class Conv(Node):
    """A 2D convolution; ``groups`` > 1 splits channels into independent groups."""

    op: Literal["conv"] = "conv"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    bias: StrictBool = True
    groups: PositiveInt = 1


class SepConv(Node):
    """A spatial conv over ``segments`` channel groups ('depthwise': one per channel),
    an optional activation ``between``, then a 1x1 pointwise conv to ``filters``.
    ``bias`` is on the pointwise conv, as in Keras's SeparableConv2D."""

    op: Literal["sepconv"] = "sepconv"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    depth_multiplier: PositiveInt = 1
    segments: Segments = "depthwise"
    between: Literal["none"] | Activation = "none"
    bias: StrictBool = True


class BN(Node):
    """Batch normalization over channels. ``center`` adds beta, ``scale`` adds gamma;
    ``momentum`` is the fraction of the running statistics kept at each update."""

    op: Literal["bn"] = "bn"
    center: StrictBool = True
    scale: StrictBool = True
    epsilon: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.99


class Act(Node):
    op: Literal["act"] = "act"
    kind: Activation


class MaxPool(Node):
    op: Literal["maxpool"] = "maxpool"
    pool: Pair
    stride: Pair | None = None  # None: the pool size
    padding: Padding = "valid"


class AvgPool(Node):
    """Average pool; with 'same' padding the padded cells are not counted (TF rule)."""

    op: Literal["avgpool"] = "avgpool"
    pool: Pair
    stride: Pair | None = None
    padding: Padding = "valid"


class GlobalAvgPool(Node):
    op: Literal["global_avg_pool"] = "global_avg_pool"


class Flatten(Node):
    """Flatten a feature map in (H, W, C) order, whatever a backend's layout."""

    op: Literal["flatten"] = "flatten"


class Dense(Node):
    op: Literal["dense"] = "dense"
    units: PositiveInt
    bias: StrictBool = True


class Dropout(Node):
    op: Literal["dropout"] = "dropout"
    rate: Annotated[float, Field(ge=0, lt=1)]


class Residual(Node):
    """``body(x) + shortcut(x)``; no shortcut layers means the identity.
    ``use_shortcut`` false drops the addition and the shortcut layers (an ablation)."""

    op: Literal["residual"] = "residual"
    body: list[Layer] = Field(min_length=1)
    shortcut: list[Layer] = Field(default_factory=list)
    use_shortcut: StrictBool = True


class Branches(Node):
    """Parallel paths over the same input, concatenated on channels in order."""

    op: Literal["branches"] = "branches"
    paths: dict[str, list[Layer]] = Field(min_length=2)


class Repeat(Node):
    """``body`` applied ``times`` times in sequence, each with its own weights."""

    op: Literal["repeat"] = "repeat"
    times: Annotated[int, Field(strict=True, ge=1, le=10_000)]
    body: list[Layer] = Field(min_length=1)


class Call(Node):
    """An instance of a block definition; ``body`` is the definition resolved with
    ``args``. Kept as a node so that backends emit one class/function per block."""

    op: Literal["call"] = "call"
    block: str
    args: dict[str, Any] = Field(default_factory=dict)
    body: list[Layer] = Field(min_length=1)


Layer = Annotated[
    Conv | SepConv | BN | Act | MaxPool | AvgPool | GlobalAvgPool | Flatten | Dense | Dropout | Residual | Branches | Repeat | Call,
    Field(discriminator="op"),
]

OPS: dict[str, type[Node]] = {
    cls.model_fields["op"].default: cls for cls in (Conv, SepConv, BN, Act, MaxPool, AvgPool, GlobalAvgPool, Flatten, Dense, Dropout)
}
COMBINATORS: dict[str, type[Node]] = {"residual": Residual, "branches": Branches, "repeat": Repeat}
SHORTHAND = {"act": "kind", "dropout": "rate", "dense": "units"}  # `act: relu` means {kind: relu}

for _cls in (Residual, Branches, Repeat, Call):
    _cls.model_rebuild()


class Param(BaseModel):
    """A declared spec parameter: a typed default the command line may override."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["int", "float", "bool", "str", "segments"]
    default: Any
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    doc: str = ""


class BlockDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    args: dict[str, Any]  # name -> default (None: required)
    doc: str = ""


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
    expect: Expect | None = None
    training: Training | None = None


def children(node: Node) -> list[tuple[str, list[Node]]]:
    """The sub-sequences of a combinator, labelled: the one place that knows the shapes
    of the tree, so that every pass walks it the same way."""
    if isinstance(node, Residual):
        return [("body", node.body), ("shortcut", node.shortcut)]
    if isinstance(node, Branches):
        return list(node.paths.items())
    if isinstance(node, (Repeat, Call)):
        return [("body", node.body)]
    return []


def walk(layers: list[Node]):
    """Every node below ``layers``, parents first."""
    for node in layers:
        yield node
        for _, seq in children(node):
            yield from walk(seq)
