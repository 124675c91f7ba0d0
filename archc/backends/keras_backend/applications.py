"""keras.applications weights files into a generated Keras model (``archc import``),
matched by structure. Imported only when used (it imports h5py; the model is Keras's).

A keras.applications weights file is read with h5py, without building the reference
model, in either of the two layouts Keras writes:

- ``.h5`` (what keras.applications ships, and ``save_weights_to_hdf5_group``): the
  layers in model order (the ``layer_names`` attribute), each with its weight names; a
  nested model (ConvNeXt's stem, a ``Sequential``) is one entry whose weight names say
  which of its layers each belongs to;
- ``.weights.h5`` (Keras 3's ``save_weights``): ``layers/<kind>[_<k>]/vars/<i>``, the
  k-th layer of each kind in model order (a nested model's under its own ``layers/``),
  its weights by position, which is how Keras itself matches them on load.

Matching is by structure, as Keras does: the generated model's layers with weights are
listed in the order Keras lists the reference's (``model.layers``: by depth in the graph,
ties in the order a walk from the output meets them), and the k-th one takes the k-th
stored layer (``.h5``) or the k-th of its kind (``.weights.h5``), weights by name or
position, every shape agreeing. Two things the files do not say are tried both ways, the
first reading that fits everywhere wins: the order of a residual's two inputs to its
addition (keras.applications' ResNet and MobileNetV2 add the shortcut first, Xception and
EfficientNet the body; both orders give the same sums, but Keras lists the layers of the
first input first) and of a gate's to its multiplication, and whether a conv with one
group per channel is stored as a DepthwiseConv2D (MobileNet) or a grouped Conv2D
(ConvNeXt): their kernels, (kh, kw, C, M) and (kh, kw, 1, C * M), are the same numbers.
When no reading fits, the one that went furthest names the first layer that does not
fit in a one-line error. Layer names play no part: the reference's ('block4_sepconv1',
'conv2d_3') and archc's ('entry_down2_residual1_body_sep_bn1_sepconv1') differ.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.syntax.errors import UserError

COMMUTATIVE = ("Add", "Multiply")  # merges whose inputs' order changes Keras's layer order only
ALIASES = {"depthwise_kernel": "kernel"}  # Keras 2's DepthwiseConv2D name, Keras 3's


@dataclass
class Stored:
    """One layer's weights in the reference file (a nested model's: ``inner``)."""

    name: str
    weights: list[tuple[str | None, Any]]  # (weight name, or None where only the position is known; array)
    inner: dict[str, list[Stored]] = field(default_factory=dict)  # .weights.h5: kind -> its layers


@dataclass
class Reference:
    """A weights file: the stored layers in model order (.h5), or per kind (.weights.h5)."""

    path: str
    ordered: list[Stored] | None = None
    by_kind: dict[str, list[Stored]] | None = None


def snake_case(class_name: str) -> str:
    """A Keras layer class name as Keras 3 names it in a ``.weights.h5`` (Conv2D -> conv2d)."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_layers(root: Any) -> list[Stored]:
    """The ``.h5`` layout's layers with weights, in order; a nested model's split by the
    layer each weight name names (``stem/stem_conv/kernel``)."""
    import numpy as np

    out: list[Stored] = []
    for layer in map(_text, root.attrs["layer_names"]):
        group = root[layer]
        full = [_text(n) for n in group.attrs.get("weight_names", [])]
        by_owner: dict[str, list[tuple[str | None, Any]]] = {}
        for name in full:
            owner, _, short = name.rpartition("/")
            by_owner.setdefault(owner or layer, []).append((short.split(":")[0], np.asarray(group[name])))
        out += [Stored(owner, weights) for owner, weights in by_owner.items()]
    return out


def _kind_of(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.+?)(?:_(\d+))?", name)
    assert match is not None
    return match[1], int(match[2] or 0)


def _v3_layers(group: Any, prefix: str) -> dict[str, list[Stored]]:
    """The ``.weights.h5`` layout's layers with weights under ``group/layers``: kind -> in order."""
    import numpy as np

    found: dict[str, dict[int, Stored]] = {}
    for name in group.get("layers", {}):
        entry = group["layers"][name]
        variables = entry.get("vars", {})
        stored = Stored(f"{prefix}{name}", [(None, np.asarray(variables[str(i)])) for i in range(len(variables))])
        stored.inner = _v3_layers(entry, f"{prefix}{name}/") if "layers" in entry else {}
        if stored.weights or stored.inner:
            kind, k = _kind_of(name)
            found.setdefault(kind, {})[k] = stored
    return {kind: [layers[k] for k in sorted(layers)] for kind, layers in found.items()}


def read_reference(path: str | Path) -> Reference:
    """The reference file's layers with weights."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"expected an HDF5 weights file (.h5 or .weights.h5) in {path}, found: {exc}") from None
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5  # a whole model saved as .h5
        if "layer_names" in root.attrs:
            return Reference(str(path), ordered=_h5_layers(root))
        if "layers" in root:
            return Reference(str(path), by_kind=_v3_layers(root, ""))
    raise UserError(f"expected a Keras weights file (layer_names, or layers/), found neither in {path}")


# -- the generated model's side ----------------------------------------------------------------


def _weight_name(variable: Any) -> str:
    return variable.name.rsplit("/", 1)[-1].split(":")[0]


def _one_per_channel(layer: Any) -> bool:
    """A Conv2D with a group per input channel: a depthwise conv in another spelling."""
    return type(layer).__name__ == "Conv2D" and layer.groups > 1 and tuple(layer.kernel.shape)[2] == 1


def _fit(layer: Any, shape: tuple[int, ...], array: Any) -> Any | None:
    """``array`` as the weight of ``shape`` of ``layer``, or None: equal shapes, or a
    depthwise kernel (kh, kw, C, M) for a conv with one group per channel (kh, kw, 1, C * M)
    and the other way round (the same numbers, in the same order)."""
    if tuple(array.shape) == shape:
        return array
    depthwise = type(layer).__name__ == "DepthwiseConv2D" or _one_per_channel(layer)
    same_window = len(shape) == array.ndim == 4 and tuple(array.shape[:2]) == shape[:2] and array.size == math.prod(shape)
    if depthwise and same_window and 1 in (shape[2], array.shape[2]):
        return array.reshape(shape)
    return None


def _arrays(layer: Any, stored: Stored) -> list[Any] | str:
    """The stored arrays for ``layer``'s weights in its order, or why they do not fit."""
    wanted = [(_weight_name(v), tuple(v.shape)) for v in layer.weights]
    if len(stored.weights) != len(wanted):
        return f"'{stored.name}' has {len(stored.weights)} weights, '{layer.name}' {len(wanted)} ({', '.join(n for n, _ in wanted)})"
    given = {ALIASES.get(n, n): a for n, a in stored.weights if n is not None}
    named = len(given) == len(wanted) and all(n in given for n, _ in wanted)
    arrays = [given[n] for n, _ in wanted] if named else [a for _, a in stored.weights]
    out = []
    for (name, shape), array in zip(wanted, arrays, strict=True):
        fitted = _fit(layer, shape, array)
        if fitted is None:
            return f"'{layer.name}' {name}: expected shape {shape}, found {tuple(array.shape)} in '{stored.name}'"
        out.append(fitted)
    return out


def _leaves(layers: list[Any]) -> list[Any]:
    out = []
    for layer in layers:
        out += _leaves(layer.layers) if hasattr(layer, "layers") else [layer] if layer.weights else []
    return out


def keras_order(model: Any, reverse: frozenset[str]) -> list[Any]:
    """``model``'s layers with weights in the order Keras would list them had the merges
    of the classes in ``reverse`` taken their inputs the other way round (the same layer
    objects, called again in a clone of the graph)."""
    if not reverse:
        return _leaves(model.layers)
    import keras

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if type(layer).__name__ in reverse and args and isinstance(args[0], (list, tuple)):
            args = (list(reversed(args[0])), *args[1:])
        return layer(*args, **kwargs)

    return _leaves(keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call).layers)


# -- matching ------------------------------------------------------------------------------------


class _Misfit(Exception):
    """A reading of the file that does not fit: how many layers it matched first, and why."""

    def __init__(self, done: int, why: str):
        super().__init__(why)
        self.done, self.why = done, why


class _Queues:
    """The stored layers of each kind not yet taken (``.weights.h5``)."""

    def __init__(self, by_kind: dict[str, list[Stored]]):
        self.by_kind = by_kind
        self.pos = dict.fromkeys(by_kind, 0)

    def head(self, kind: str) -> Stored | None:
        layers = self.by_kind.get(kind, [])
        return layers[self.pos[kind]] if self.pos.get(kind, 0) < len(layers) else None

    def take(self, kind: str) -> None:
        self.pos[kind] += 1

    def left(self) -> list[tuple[str, Stored]]:
        return [(kind, layers[self.pos[kind]]) for kind, layers in self.by_kind.items() if self.pos[kind] < len(layers)]

    def nested(self, kind: str) -> list[tuple[str, Stored]]:
        """The next nested model of each kind that holds a layer of ``kind``."""
        return [(k, s) for k, s in self.left() if s.inner and kind in s.inner]


def _kind(layer: Any, depthwise: bool) -> str:
    return "depthwise_conv2d" if depthwise and _one_per_channel(layer) else snake_case(type(layer).__name__)


def _in_order(layers: list[Any], stored: list[Stored]) -> list[tuple[Any, list[Any]]]:
    """``.h5``: the k-th layer with weights takes the k-th stored layer."""
    out = []
    for k, layer in enumerate(layers):
        if k >= len(stored):
            raise _Misfit(k, f"expected a stored layer for '{layer.name}' (the {k + 1}th with weights), found only {len(stored)}")
        arrays = _arrays(layer, stored[k])
        if isinstance(arrays, str):
            raise _Misfit(k, f"{arrays} (the {k + 1}th layer with weights)")
        out.append((layer, arrays))
    if len(stored) > len(layers):
        raise _Misfit(
            len(layers),
            f"'{stored[len(layers)].name}' has no counterpart in the spec, which has {len(layers)} layers with weights to the file's {len(stored)}",
        )
    return out


def _by_kind(layers: list[Any], by_kind: dict[str, list[Stored]], depthwise: bool) -> list[tuple[Any, list[Any]]]:
    """``.weights.h5``: the k-th layer of a kind takes the k-th stored one; a nested model
    (a Sequential) is entered when its next layer fits and the top level's does not, and
    left when all its layers are taken."""
    top, inside = _Queues(by_kind), None
    out = []
    for k, layer in enumerate(layers):
        kind = _kind(layer, depthwise)
        queues = inside if inside is not None else top
        stored = queues.head(kind)
        arrays = _arrays(layer, stored) if stored is not None and not stored.inner else f"no {kind} layer left for '{layer.name}'"
        if isinstance(arrays, str) and inside is None:
            for outer_kind, nested in top.nested(kind):
                inner = _Queues(nested.inner)
                if not isinstance(_arrays(layer, inner.head(kind)), str):
                    top.take(outer_kind)
                    queues = inside = inner
                    stored = inside.head(kind)
                    arrays = _arrays(layer, stored)
                    break
        if isinstance(arrays, str):
            raise _Misfit(k, f"{arrays} (the {queues.pos.get(kind, 0) + 1}th {kind} layer)")
        queues.take(kind)
        out.append((layer, arrays))
        if inside is not None and not inside.left():
            inside = None
    if left := (inside.left() if inside is not None else []) + top.left():
        kind, stored = left[0]
        raise _Misfit(len(layers), f"'{stored.name}' ({kind}) has no counterpart in the spec")
    return out


def match(model: Any, reference: Reference) -> list[tuple[Any, list[Any]]]:
    """(layer of ``model``, the arrays for its ``set_weights``) for every layer with weights,
    under the first reading that fits; or a UserError naming the first layer that does not
    fit in the reading that went furthest."""
    present = [name for name in COMMUTATIVE if any(type(layer).__name__ == name for layer in model.layers)]
    merges = [frozenset(c) for n in range(len(present) + 1) for c in itertools.combinations(present, n)]
    spellings = (False, True) if reference.by_kind is not None else (False,)
    best: _Misfit | None = None
    for reverse in merges:
        layers = keras_order(model, reverse)
        for depthwise in spellings:
            try:
                if reference.ordered is not None:
                    return _in_order(layers, reference.ordered)
                return _by_kind(layers, reference.by_kind or {}, depthwise)
            except _Misfit as misfit:
                best = misfit if best is None or misfit.done > best.done else best
    assert best is not None
    raise UserError(f"{reference.path}: {best.why}: the architectures differ")


def load_into(model: Any, path: str | Path) -> int:
    """Read the keras.applications file ``path`` and set ``model``'s weights from it by
    structure; returns the number of layers with weights."""
    pairs = match(model, read_reference(path))
    for layer, arrays in pairs:
        layer.set_weights(arrays)
        if hasattr(layer, "finalize_state"):  # Normalization computes from copies of its state, made here
            layer.finalize_state()
    return len(pairs)
