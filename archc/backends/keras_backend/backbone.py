"""The backbone API of a generated Keras model: the taps of
:func:`archc.passes.taps.backbone` by the Keras layer whose output each is, and the layer
the features end with (what ``include_top=False`` keeps). A sub-model of the built model
gives them (``keras.Model(model.inputs, ...)``: the layers are shared), so nothing in the
function that builds the model changes."""

from __future__ import annotations

from dataclasses import dataclass

from archc.ir.ops import Node
from archc.passes.analysis import Analysis
from archc.passes.taps import backbone

# Names the generated module gives the backbone API (templates/backbone.py.j2).
BACKBONE_NAMES = ("FEATURE_INFO", "FEATURES_END", "KEPT", "_backbone", "_layer", "include_top", "pooling", "features_only", "out_indices")


@dataclass(frozen=True)
class KerasBackbone:
    """What templates/backbone.py.j2 prints."""

    feature_info: list[tuple[int, int, str]]  # (channels, reduction, layer) per tap
    end: str | None  # the features' last layer (None: no head to leave out)
    kept: tuple[str, ...] = ()  # the head's layers that include_top=False keeps

    @property
    def kept_code(self) -> str:
        return "(" + ", ".join(f'"{name}"' for name in self.kept) + ("," if len(self.kept) == 1 else "") + ")"

    @property
    def info_lines(self) -> list[str]:
        """FEATURE_INFO's items, one a line (exploded where ruff would)."""
        lines = []
        for channels, reduction, layer in self.feature_info:
            line = f'    ({channels}, {reduction}, "{layer}"),'
            lines += (
                [line] if len(line) <= 88 else ["    (", f"        {channels},", f"        {reduction},", f'        "{layer}",', "    ),"]
            )
        return lines


def keras_backbone(analysis: Analysis, names: dict[str, str]) -> KerasBackbone | None:
    """The view, or None where the torch module has no backbone API either (the features
    are no chain of modules) or a tap is inside one run of a repeat."""
    found = backbone(analysis)
    if found.steps is None or not found.taps or any("[" in tap.module for tap in found.taps):
        return None
    info = [(tap.channels, tap.reduction, output_layer(tap.node, names)) for tap in found.taps]
    on = [node for key, node in found.steps if key in analysis.instance_shapes]
    end = output_layer(on[-1], names) if found.head is not None and on else None
    kept = tuple(output_layer(node, names) for node in pooled(analysis, found.head or []))
    if None in [layer for _, _, layer in info] or None in kept or (found.head is not None and end is None):
        return None  # a module whose output is no layer's (a body switched off whole)
    return KerasBackbone(info, end, kept)


def pooled(analysis: Analysis, head: list[tuple[str, Node]]) -> list[Node]:
    """The layers with weights in the run right after the head's global pool that keeps
    its width (ConvNeXt's layer norm): keras.applications keeps them without the top,
    after the pool if any; the run ends at the first layer that changes the width (a
    classifier, a dense)."""
    found = []
    for key, node in head[1:]:
        if key not in analysis.instance_shapes:
            continue
        inp, out = analysis.instance_shapes[key]
        if out[-1] != inp[-1]:
            break
        if analysis.counts[node.path].trainable > 0:
            found.append(node)
    return found


def output_layer(node: Node, names: dict[str, str], indices: tuple[int | str, ...] = ()) -> str | None:
    """The Keras layer whose output is the node's with these params: its own (an op, a
    residual's add, a concat), else that of the last layer on in its body (a block call,
    a repeat's last run, a residual whose shortcut is off and so has no add)."""
    if node.path in names and len(node.running()) == len(node.children()):
        return names[node.path].format(*indices)
    on = [n for n in node.children()[0][1] if n.when] if node.children() else []
    if not on:
        return None
    if node.indexed:  # '{}': the last run, whatever the params make the count (_layer)
        indices = (*indices, "{}" if "{}" not in indices else node.repeats() - 1)
    return output_layer(on[-1], names, indices)
