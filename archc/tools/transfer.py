"""Partial transfer (``archc import --partial``): the weights of one architecture into a
variant of it, tensor by tensor, in archc's neutral format (``{instance key: {role:
array}}``, :mod:`archc.passes.instances`), with a report.

A tensor is carried over where the variant has the same instance key and role (the same
place in the network) and the same shape. The first conv's kernel, where only its input
channels differ and its input is the network's, is adapted as timm's
``adapt_input_conv`` does: summed over the input channels for one channel (a grey image
then gives what the source gives on that image repeated in each channel), else the
source's channels repeated and scaled by (source channels / channels). Every other
tensor keeps the variant's fresh initial value and is reported: skipped (in the file,
another shape here, with both shapes) or new (no such place in the file). Uses numpy,
no framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from archc.passes.analysis import Analysis
from archc.passes.instances import weighted


@dataclass
class Report:
    """What a partial transfer did with each tensor (``key:role`` names)."""

    matched: list[str] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)  # (tensor, how)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tensor, why)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # in the file, with no place here

    def lines(self) -> list[str]:
        out = [
            f"matched {len(self.matched)} tensors, adapted {len(self.adapted)}, skipped {len(self.skipped)}, "
            f"new {len(self.new)}, unused {len(self.unused)}"
        ]
        out += [f"adapted {name}: {how}" for name, how in self.adapted]
        out += [f"skipped {name}: {why}" for name, why in self.skipped]
        out += [f"new {name}: not in the file" for name in self.new]
        out += [f"unused {name}: no such place in this network" for name in self.unused]
        return out


def adapt_input_kernel(kernel: Any, channels: int) -> Any:
    """A conv kernel (kh, kw, c, filters) for ``channels`` input channels instead of c
    (timm's adapt_input_conv, in the Keras layout)."""
    import numpy as np

    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    have = kernel.shape[2]
    tiled = np.tile(kernel, (1, 1, math.ceil(channels / have), 1))[:, :, :channels]
    return (tiled * (have / channels)).astype(kernel.dtype)


def _input_conv(analysis: Analysis) -> str | None:
    """The key of the first instance with a kernel, where it reads the network's input."""
    for inst in weighted(analysis):
        if "kernel" in inst.node.roles(inst.input):
            return inst.key if tuple(inst.input) == tuple(analysis.net.input) else None
    return None


def transfer(
    given: dict[str, dict[str, Any]], fresh: dict[str, dict[str, Any]], analysis: Analysis
) -> tuple[dict[str, dict[str, Any]], Report]:
    """The variant's weights (``fresh``: its initial ones, for ``analysis``) with every
    tensor of ``given`` that fits, and the report."""
    report = Report()
    first = _input_conv(analysis)
    out: dict[str, dict[str, Any]] = {}
    for key, roles in fresh.items():
        out[key] = {}
        for role, value in roles.items():
            name, source = f"{key}:{role}", given.get(key, {}).get(role)
            out[key][role] = value
            if source is None:
                report.new.append(name)
            elif source.shape == value.shape:
                out[key][role] = source
                report.matched.append(name)
            elif key == first and role == "kernel" and _only_input_channels(source.shape, value.shape):
                out[key][role] = adapt_input_kernel(source, value.shape[2])
                how = "summed over" if value.shape[2] == 1 else "repeated and scaled across"
                report.adapted.append((name, f"{tuple(source.shape)} -> {tuple(value.shape)}, {how} the input channels"))
            else:
                report.skipped.append((name, f"{tuple(source.shape)} in the file, {tuple(value.shape)} here"))
    report.unused = [f"{key}:{role}" for key, roles in given.items() for role in roles if role not in fresh.get(key, {})]
    return out, report


def _only_input_channels(source: tuple[int, ...], target: tuple[int, ...]) -> bool:
    return len(source) == len(target) == 4 and source[:2] == target[:2] and source[3] == target[3]
