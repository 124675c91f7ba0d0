"""The Keras side of archc's framework-neutral weight format (see :mod:`archc.passes.instances`):
export and load a model's weights, per-instance counts, intermediate outputs, and
``.weights.h5`` checkpoints. Imported only when used (it imports keras).

The neutral format is Keras's own layout, so the mapping is by layer and weight name
only (:func:`.render.layer_names`): a conv or dense layer's ``kernel``/``bias``; a BN's
``gamma``/``beta``/``moving_mean``/``moving_variance``; a sepconv's SeparableConv2D
``depthwise_kernel`` -> ``spatial``, ``pointwise_kernel`` -> ``pointwise``, ``bias``,
or, where the sepconv has segments or an activation between, the ``kernel`` of
``<name>_spatial`` (a DepthwiseConv2D or grouped Conv2D) and the ``kernel``/``bias``
of ``<name>_pointwise``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from archc.codegen.plan import plan
from archc.passes.analysis import Analysis
from archc.passes.instances import Instance, instances, weighted

from .render import OPS, layer_names


class WeightError(ValueError):
    """A weight that does not fit the model: which instance, which role, which shapes."""


def _names(analysis: Analysis) -> dict[str, str]:
    return layer_names(plan(analysis))


def _layers(model: Any) -> dict[str, Any]:
    return {layer.name: layer for layer in model.layers}


def _parts(inst: Instance, names: dict[str, str], layers: dict[str, Any]) -> list[tuple[Any, dict[str, str]]]:
    """(layer, {Keras weight name: role}) for each layer that holds the instance's weights
    (the ``weights`` of its op's record in render.OPS)."""
    pattern = names.get(inst.path)
    if pattern is None:
        return []
    name = pattern.format(*inst.indices)
    roles = OPS[inst.node.op].weights
    if callable(roles):
        return roles(name, layers)
    return [(layers[name], roles)] if roles and name in layers else []


def _variables(inst: Instance, names: dict[str, str], layers: dict[str, Any]) -> dict[str, Any]:
    """role -> the Keras variable that holds it."""
    out = {}
    for layer, roles in _parts(inst, names, layers):
        for v in layer.weights:
            short = v.name.rsplit("/", 1)[-1]
            out[roles.get(short, f"{layer.name}/{short}")] = v
    return out


def _neutral(v: Any) -> np.ndarray:
    """A variable's value, float32 (Normalization's integer count too, as torch holds it)."""
    return np.array(v.numpy(), dtype=np.float32 if "int" in str(v.dtype) else None, copy=True)


def export(model: Any, analysis: Analysis) -> dict[str, dict[str, np.ndarray]]:
    """The model's weights in the neutral format."""
    names, layers = _names(analysis), _layers(model)
    out = {}
    for inst in weighted(analysis):
        variables = _variables(inst, names, layers)
        if not variables:
            raise WeightError(f"{inst.key}: no Keras layer for this instance")
        out[inst.key] = {role: _neutral(v) for role, v in variables.items()}
    return out


def load(model: Any, analysis: Analysis, weights: dict[str, dict[str, np.ndarray]]) -> None:
    """Copy neutral-format weights into the model (every instance, every role it has;
    a missing or extra role or a wrong shape is an error naming the instance)."""
    names, layers = _names(analysis), _layers(model)
    expected = {inst.key for inst in weighted(analysis)}
    if extra := sorted(set(weights) - expected):
        raise WeightError(f"{extra[0]}: no such weighted instance in this network ({len(extra)} unknown keys)")
    for inst in weighted(analysis):
        if inst.key not in weights:
            raise WeightError(f"{inst.key}: no weights given for this instance")
        given = dict(weights[inst.key])
        variables = _variables(inst, names, layers)
        if not variables:
            raise WeightError(f"{inst.key}: no Keras layer for this instance")
        for role, v in variables.items():
            if role not in given:
                raise WeightError(f"{inst.key}: the Keras layer has '{role}', the weights do not")
            value = np.asarray(given.pop(role))
            if tuple(value.shape) != tuple(v.shape):
                raise WeightError(f"{inst.key}: '{role}' of shape {tuple(value.shape)} does not fit the Keras weight {tuple(v.shape)}")
            v.assign(value.astype(v.dtype) if "int" in str(v.dtype) else value)  # Normalization's count
        if given:
            raise WeightError(f"{inst.key}: the Keras layer has no '{sorted(given)[0]}'")
        for layer, _ in _parts(inst, names, layers):
            if isinstance(layer, keras.layers.Normalization):
                layer.finalize_state()  # it computes from copies of its state, made here


def counts(model: Any, analysis: Analysis) -> dict[str, tuple[int, int]]:
    """instance key -> (trainable, non-trainable) weight sizes of its layers."""
    names, layers = _names(analysis), _layers(model)
    out = {}
    for inst in weighted(analysis):
        parts = [layer for layer, _ in _parts(inst, names, layers)]
        out[inst.key] = (
            sum(math.prod(w.shape) for layer in parts for w in layer.trainable_weights),
            sum(math.prod(w.shape) for layer in parts for w in layer.non_trainable_weights),
        )
    return out


def _output_layer(inst: Instance, names: dict[str, str], layers: dict[str, Any]) -> Any | None:
    """The layer whose output is the instance's output, if the model has one (block calls
    and repeats have none; a residual has one, its addition, when it has a shortcut)."""
    pattern = names.get(inst.path)
    if pattern is None:
        return None
    name = OPS[inst.node.op].output(pattern.format(*inst.indices), layers, inst.node)
    if name is None:
        return None
    return layers.get(name)


def activations(model: Any, analysis: Analysis, x: np.ndarray, keys: list[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``x`` (N, H, W, C) through the model in inference mode (training=False):
    (output, {instance key: that instance's output}) for the instances in ``keys``
    (default: every instance that has a layer of its own)."""
    names, layers = _names(analysis), _layers(model)
    wanted = None if keys is None else set(keys)
    probes: list[tuple[str, Any]] = []
    for inst in instances(analysis):
        if wanted is not None and inst.key not in wanted:
            continue
        layer = _output_layer(inst, names, layers)
        if layer is not None:
            probes.append((inst.key, layer.output))
    probe = keras.Model(model.inputs, [model.output, *(t for _, t in probes)])  # the output as built: a tensor or a dict
    results = probe([x], training=False)
    if not isinstance(results, (list, tuple)):  # a model with one output returns it bare
        results = [results]
    arrays = [_numpy(r) for r in results]
    return arrays[0], {key: a for (key, _), a in zip(probes, arrays[1:])}


def _numpy(result: Any) -> Any:
    """An output as numpy; several outputs as a dict by name."""
    if isinstance(result, dict):
        return {name: _numpy(value) for name, value in result.items()}
    return np.asarray(keras.ops.convert_to_numpy(result))


def save_checkpoint(model: Any, path: str | Path) -> None:
    """``model.save_weights`` (the file name must end in ``.weights.h5``)."""
    model.save_weights(str(path))


def load_checkpoint(model: Any, path: str | Path) -> None:
    """``model.load_weights`` of a ``.weights.h5`` file."""
    model.load_weights(str(path))
