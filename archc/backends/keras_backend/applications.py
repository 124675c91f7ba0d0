"""keras.applications weights files into a generated Keras model (``archc import``),
matched by structure. Imported only when used (it imports h5py; the model is Keras's).

A keras.applications weights file is read with h5py, without building the reference
model, in either of the two layouts Keras writes:

- ``.h5`` (what keras.applications ships, and ``save_weights_to_hdf5_group``): the
  layers in model order (the ``layer_names`` attribute), each with its weight names;
- ``.weights.h5`` (Keras 3's ``save_weights``): ``layers/<kind>[_<k>]/vars/<i>``, the
  k-th layer of each kind in model order, its weights by position, which is how
  Keras itself matches them on load.

Matching is by structure, as Keras does: the k-th conv (separable conv, depthwise conv,
batch norm, dense layer) of the reference goes into the k-th layer of that kind of the
generated Keras model, weights by name (``.h5``) or position (``.weights.h5``), and
every shape must agree. The first layer whose shapes differ, or that has no
counterpart, is named in a one-line error. Layer names play no part: the reference's
('block4_sepconv1', 'conv2d_3') and archc's ('entry_down2_residual1_body_sep_bn1_sepconv1')
differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archc.syntax.errors import UserError

KINDS = ("conv2d", "separable_conv2d", "depthwise_conv2d", "batch_normalization", "dense")


@dataclass
class Stored:
    """One layer's weights in the reference file."""

    name: str
    kind: str
    weights: list[tuple[str | None, Any]]  # (weight name, or None where only the position is known; array)


def snake_case(class_name: str) -> str:
    """A Keras layer class name as Keras 3 names it in a ``.weights.h5`` (Conv2D -> conv2d)."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _kind(names: list[str], arrays: list[Any]) -> str | None:
    """The kind of a layer of an ``.h5`` file, from its weight names and shapes."""
    if "moving_mean" in names:
        return "batch_normalization"
    if "pointwise_kernel" in names:
        return "separable_conv2d"
    if "depthwise_kernel" in names:
        return "depthwise_conv2d"
    if "kernel" in names:
        return "conv2d" if arrays[names.index("kernel")].ndim == 4 else "dense"
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_reference(path: str | Path) -> dict[str, list[Stored]]:
    """kind -> the reference file's layers of that kind, in model order."""
    import h5py
    import numpy as np

    by_kind: dict[str, list[Stored]] = {kind: [] for kind in KINDS}
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"expected an HDF5 weights file (.h5 or .weights.h5) in {path}, found: {exc}") from None
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5  # a whole model saved as .h5
        if "layer_names" in root.attrs:
            for layer in map(_text, root.attrs["layer_names"]):
                group = root[layer]
                full = [_text(n) for n in group.attrs.get("weight_names", [])]
                arrays = [np.asarray(group[n]) for n in full]
                names = [n.rsplit("/", 1)[-1].split(":")[0] for n in full]
                kind = _kind(names, arrays)
                if kind in by_kind:
                    by_kind[kind].append(Stored(layer, kind, list(zip(names, arrays, strict=True))))
        elif "layers" in root:
            for kind in KINDS:
                k = 0
                while (name := kind if k == 0 else f"{kind}_{k}") in root["layers"]:
                    vars_ = root["layers"][name].get("vars", {})
                    arrays = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
                    by_kind[kind].append(Stored(name, kind, [(None, a) for a in arrays]))
                    k += 1
        else:
            raise UserError(f"expected a Keras weights file (layer_names, or layers/), found neither in {path}")
    return by_kind


def _weight_name(variable: Any) -> str:
    return variable.name.rsplit("/", 1)[-1].split(":")[0]


def match(model: Any, reference: dict[str, list[Stored]], source: str) -> list[tuple[Any, list[Any]]]:
    """(layer of ``model``, the arrays for its ``set_weights``) for every layer with weights,
    or a UserError naming the first layer that does not fit."""
    out = []
    taken = dict.fromkeys(KINDS, 0)
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = snake_case(type(layer).__name__)
        if kind not in reference:
            raise UserError(f"expected layers that keras.applications files hold, found {type(layer).__name__} '{layer.name}'")
        k, taken[kind] = taken[kind], taken[kind] + 1
        if k >= len(reference[kind]):
            raise UserError(
                f"{source}: expected a {kind} layer for '{layer.name}' (the {k + 1}th of its kind), "
                f"found only {len(reference[kind])}: the architectures differ"
            )
        stored = reference[kind][k]
        wanted = [(_weight_name(v), tuple(v.shape)) for v in layer.weights]
        given = dict(stored.weights) if all(n is not None for n, _ in stored.weights) else None
        arrays = [given.get(name) for name, _ in wanted] if given is not None else [a for _, a in stored.weights]
        if len(arrays) != len(wanted) or (given is not None and len(given) != len(wanted)):
            raise UserError(
                f"{source}: layer '{stored.name}' has {len(stored.weights)} weights, '{layer.name}' "
                f"{len(wanted)} ({', '.join(n for n, _ in wanted)}): the architectures differ"
            )
        for (name, shape), array in zip(wanted, arrays, strict=True):
            if array is None or tuple(array.shape) != shape:
                found = "none" if array is None else str(tuple(array.shape))
                raise UserError(
                    f"{source}: '{layer.name}' {name}: expected shape {shape}, found {found} in '{stored.name}' "
                    f"(the {k + 1}th {kind} layer): the architectures differ"
                )
        out.append((layer, arrays))
    for kind, layers in reference.items():
        if len(layers) > taken[kind]:
            raise UserError(
                f"{source}: '{layers[taken[kind]].name}' ({kind}) has no counterpart in the spec, which has "
                f"{taken[kind]} {kind} layers to the file's {len(layers)}: the architectures differ"
            )
    return out


def load_into(model: Any, path: str | Path) -> int:
    """Read the keras.applications file ``path`` and set ``model``'s weights from it by
    structure; returns the number of layers with weights."""
    pairs = match(model, read_reference(path), str(path))
    for layer, arrays in pairs:
        layer.set_weights(arrays)
    return len(pairs)
