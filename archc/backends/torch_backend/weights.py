"""The torch side of archc's framework-neutral weight format (see :mod:`archc.passes.instances`):
export and load a model's weights, per-instance counts, intermediate outputs, and
``state_dict`` checkpoints. Imported only when used (it imports torch).

Each op's mapping is the ``weights`` of its record (``OPS`` and the layouts in :mod:`.ops`).
The layouts, torch -> neutral (= Keras):

- conv: weight (out, in/groups, kh, kw) -> kernel (kh, kw, in/groups, out);
- sepconv: the depthwise ``spatial.weight`` (C*dm, 1, kh, kw), output channel c*dm + m,
  -> (kh, kw, C, dm); a grouped one (C*dm, C/s, kh, kw) -> (kh, kw, C/s, C*dm);
  ``pointwise.weight`` (f, C*dm, 1, 1) -> (1, 1, C*dm, f); the bias is the pointwise's;
- bn: weight -> gamma, bias -> beta, running_mean / running_var -> moving_mean /
  moving_variance (``num_batches_tracked`` has no Keras counterpart: the generated
  code always sets a momentum, so torch never reads it);
- depthwise: weight (C*dm, 1, kh, kw) -> kernel (kh, kw, C, dm), as a sepconv's spatial;
- layer_norm: weight -> gamma, bias -> beta; layer_scale: gamma; normalize (without
  given constants): mean, variance, count;
- dense: weight (units, in) -> kernel (in, units); channel_dense (a 1x1 conv):
  weight (units, in, 1, 1) -> kernel (in, units). The flatten before a dense layer is
  in (H, W, C) order in both frameworks (FlattenHWC), so no row permutation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from archc.passes.analysis import Analysis
from archc.passes.instances import Instance, instances, roles, weighted

from .ops import OPS, TorchWeights
from .render import qualified_names, torch_plan


class WeightError(ValueError):
    """A weight that does not fit the model: which instance, which role, which shapes."""


def _module(model: Any, names: dict[str, str], inst: Instance) -> torch.nn.Module | None:
    name = names.get(inst.path)
    if name is None:
        return None
    return model.get_submodule(name.format(*inst.indices))


def _record(inst: Instance) -> TorchWeights:
    """The weight mapping of the instance's op (its record in ops.OPS)."""
    return OPS[inst.node.op].weights


def _to_neutral(inst: Instance, role: str, t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    layout = _record(inst).to_neutral.get(role)
    return np.ascontiguousarray(layout(a, inst)) if layout else a.copy()


def _from_neutral(inst: Instance, role: str, a: np.ndarray) -> np.ndarray:
    layout = _record(inst).from_neutral.get(role)
    return layout(a, inst) if layout else a


def _tensors(inst: Instance, module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """role -> the tensor that holds it in ``module`` (None where the module lacks it)."""
    return _record(inst).tensors(module)


def export(model: Any, analysis: Analysis) -> dict[str, dict[str, np.ndarray]]:
    """The model's weights in the neutral format."""
    names = qualified_names(torch_plan(analysis))
    out = {}
    for inst in weighted(analysis):
        module = _module(model, names, inst)
        if module is None:
            raise WeightError(f"{inst.key}: no torch module for this instance")
        out[inst.key] = {role: _to_neutral(inst, role, t) for role, t in _tensors(inst, module).items() if t is not None}
    return out


def load(model: Any, analysis: Analysis, weights: dict[str, dict[str, np.ndarray]]) -> None:
    """Copy neutral-format weights into the model (every instance, every role it has;
    a missing or extra role or a wrong shape is an error naming the instance)."""
    names = qualified_names(torch_plan(analysis))
    expected = {inst.key for inst in weighted(analysis)}
    if extra := sorted(set(weights) - expected):
        raise WeightError(f"{extra[0]}: no such weighted instance in this network ({len(extra)} unknown keys)")
    with torch.no_grad():
        for inst in weighted(analysis):
            if inst.key not in weights:
                raise WeightError(f"{inst.key}: no weights given for this instance")
            module = _module(model, names, inst)
            given = dict(weights[inst.key])
            for role, t in _tensors(inst, module).items():
                if t is None:
                    continue
                if role not in given:
                    raise WeightError(f"{inst.key}: the torch module has '{role}', the weights do not")
                value = _from_neutral(inst, role, np.asarray(given.pop(role)))
                if tuple(value.shape) != tuple(t.shape):
                    raise WeightError(f"{inst.key}: '{role}' of shape {tuple(value.shape)} does not fit the torch tensor {tuple(t.shape)}")
                t.copy_(torch.from_numpy(np.ascontiguousarray(value).reshape(value.shape)))  # 0-d stays 0-d
            if given:
                raise WeightError(f"{inst.key}: the torch module has no '{sorted(given)[0]}'")


def network_order(model: Any, analysis: Analysis) -> list[tuple[str, torch.Tensor]]:
    """The model's weight tensors in network order, ``(instance key/role, tensor)``: each
    weighted instance's roles in the IR's order (a conv's kernel, then its bias; BN gamma,
    beta, mean, variance), in torch's layout. A spec written layer for layer in the order
    of a torch model's modules has its ``state_dict`` in this order, so a copy by
    structure zips the two (tests/test_oracle_copy.py)."""
    names = qualified_names(torch_plan(analysis))
    out = []
    for inst in weighted(analysis):
        module = _module(model, names, inst)
        if module is None:
            raise WeightError(f"{inst.key}: no torch module for this instance")
        tensors = _tensors(inst, module)
        out += [(f"{inst.key}/{role}", tensors[role]) for role in roles(inst) if tensors.get(role) is not None]
    return out


def counts(model: Any, analysis: Analysis) -> dict[str, tuple[int, int]]:
    """instance key -> (trainable, non-trainable) of its module, counted as
    ``TorchBackend.count`` counts (running mean and variance non-trainable)."""
    names = qualified_names(torch_plan(analysis))
    out = {}
    for inst in weighted(analysis):
        module = _module(model, names, inst)
        if module is None:
            out[inst.key] = (0, 0)
            continue
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        stats = sum(b.numel() for n, b in module.named_buffers() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
        out[inst.key] = (trainable, frozen + stats)
    return out


def _nhwc(t: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(t, dict):  # several outputs, by name
        return {name: _nhwc(value) for name, value in t.items()}
    a = t.detach().cpu().float().numpy()  # a copy below: a later in-place op must not change it
    return np.array(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a, order="C", copy=True)


def activations(model: Any, analysis: Analysis, x: np.ndarray, keys: list[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``x`` (N, H, W, C) through the model in inference mode (eval, no grad):
    (output, {instance key: that instance's output, NHWC or (N, features)}) for the
    instances in ``keys`` (default: every instance that has a module)."""
    names = qualified_names(torch_plan(analysis))
    wanted = None if keys is None else set(keys)
    seen: dict[str, np.ndarray] = {}
    hooks = []
    for inst in instances(analysis):
        if wanted is not None and inst.key not in wanted:
            continue
        module = _module(model, names, inst)
        if module is None:
            continue
        hooks.append(module.register_forward_hook(lambda m, i, out, key=inst.key: seen.__setitem__(key, _nhwc(out))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return _nhwc(y), seen


def save_checkpoint(model: Any, path: str | Path) -> None:
    """The model's ``state_dict`` with ``torch.save``."""
    torch.save(model.state_dict(), Path(path))


def load_checkpoint(model: Any, path: str | Path) -> None:
    """A ``state_dict`` file (``torch.load`` with ``weights_only``) into the model, strictly;
    a training checkpoint (a dict with the state_dict under ``model``) works too."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    model.load_state_dict(state, strict=True)
