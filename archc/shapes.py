"""Shape inference: every enabled node's input and output shape, or a located error
for a network that could not run (mismatched residuals or branches, segments that do
not divide channels, valid windows larger than their input, ...)."""

from __future__ import annotations

import math

from .errors import Location, SpecError
from .ir import (
    BN,
    Act,
    AvgPool,
    Branches,
    Call,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    Network,
    Node,
    Repeat,
    Residual,
    SepConv,
    Shape,
)

Shapes = dict[str, tuple[Shape, Shape]]


def fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def infer(net: Network) -> Shapes:
    """path -> (input shape, output shape) for every enabled node, in network order."""
    shapes: Shapes = {}
    shape: Shape = tuple(net.input)
    for layers in net.flows.values():
        shape = _sequence(layers, shape, shapes)
    return shapes


def output_shape(net: Network, shapes: Shapes) -> Shape:
    last = [node for layers in net.flows.values() for node in layers if node.when]
    return shapes[last[-1].path][1] if last else tuple(net.input)


def _fail(node: Node, message: str) -> SpecError:
    w = node.where
    return SpecError(Location(w.file, w.line, w.col, w.spec_path), message)


def _sequence(layers: list[Node], shape: Shape, shapes: Shapes) -> Shape:
    for node in layers:
        if node.when:
            out = _node(node, shape, shapes)
            shapes[node.path] = (shape, out)
            shape = out
    return shape


def _spatial(node: Node, shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], padding: str) -> tuple[int, int]:
    """TF/Keras output size: 'same' is ceil(n / s); 'valid' needs the window to fit."""
    if padding == "same":
        return tuple(math.ceil(n / s) for n, s in zip(shape[:2], stride))
    if kernel[0] > shape[0] or kernel[1] > shape[1]:
        raise _fail(node, f"expected a window no larger than its {fmt(shape[:2])} input with 'valid' padding, found {fmt(kernel)}")
    return tuple((n - k) // s + 1 for n, k, s in zip(shape[:2], kernel, stride))


def _feature_map(node: Node, shape: Shape) -> None:
    if len(shape) != 3:
        raise _fail(node, f"expected a feature map (height x width x channels) as input to '{node.op}', found a vector of {shape[0]}")


def _node(node: Node, shape: Shape, shapes: Shapes) -> Shape:
    if isinstance(node, (BN, Act, Dropout)):
        return shape
    if isinstance(node, Conv):
        _feature_map(node, shape)
        c = shape[2]
        if c % node.groups or node.filters % node.groups:
            raise _fail(node, f"expected groups that divide the {c} input channels and {node.filters} filters, found groups {node.groups}")
        return (*_spatial(node, shape, node.kernel, node.stride, node.padding), node.filters)
    if isinstance(node, SepConv):
        _feature_map(node, shape)
        c = shape[2]
        if node.segments != "depthwise" and c % node.segments:
            origin = f" (from ${node.refs['segments']})" if "segments" in node.refs else ""
            raise _fail(node, f"expected segments that divide the {c} input channels, found segments {node.segments}{origin}")
        return (*_spatial(node, shape, node.kernel, node.stride, node.padding), node.filters)
    if isinstance(node, (MaxPool, AvgPool)):
        _feature_map(node, shape)
        return (*_spatial(node, shape, node.pool, node.stride or node.pool, node.padding), shape[2])
    if isinstance(node, GlobalAvgPool):
        _feature_map(node, shape)
        return (shape[2],)
    if isinstance(node, Flatten):
        return (math.prod(shape),)
    if isinstance(node, Dense):
        if len(shape) != 1:
            raise _fail(node, f"expected a vector as input to 'dense' (add flatten or global_avg_pool), found a {fmt(shape)} feature map")
        return (node.units,)
    if isinstance(node, Residual):
        out = _sequence(node.body, shape, shapes)
        if node.use_shortcut:
            short = _sequence(node.shortcut, shape, shapes)
            if out != short:
                which = "shortcut" if node.shortcut else "identity shortcut"
                raise _fail(node, f"expected the residual body's output to match its {which} ({fmt(short)}), found {fmt(out)}")
        return out
    if isinstance(node, Branches):
        outs = {name: _sequence(layers, shape, shapes) for name, layers in node.paths.items()}
        first_name, first = next(iter(outs.items()))
        for name, out in outs.items():
            if out[:-1] != first[:-1] or len(out) != len(first):
                raise _fail(
                    node,
                    f"expected branches to agree except in channels (path '{first_name}' gives {fmt(first)}), found {fmt(out)} from path '{name}'",
                )
        return (*first[:-1], sum(out[-1] for out in outs.values()))
    if isinstance(node, Repeat):
        out = _sequence(node.body, shape, shapes)
        if node.times > 1 and out != shape:
            raise _fail(node, f"expected a repeated body to keep its input shape {fmt(shape)}, found {fmt(out)}")
        return out
    if isinstance(node, Call):
        return _sequence(node.body, shape, shapes)
    raise AssertionError(f"no shape rule for {node.op}")
