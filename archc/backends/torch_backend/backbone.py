"""The backbone API of a generated torch model: what :func:`archc.passes.taps.backbone`
found (the taps, the features' modules in order, the head), by module name.

The generated module runs the modules by name, one after the other (``FEATURES``, then
``HEAD``), so it can stop after the last map it needs, as timm's ``FeatureListNet`` does;
that is only right where those modules are a chain, each called on the one before's
output, which this checks: a step that is no module (a residual or a branch's statements)
leaves the API out of that module.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc.ir.ops import Node
from archc.passes.analysis import Analysis
from archc.passes.fold import takes_pad
from archc.passes.taps import backbone

from .ops import OPS
from .scope import alone


@dataclass(frozen=True)
class BackboneView:
    """What templates/backbone.py.j2 and features.py.j2 print."""

    feature_info: list[tuple[int, int, str]]  # (channels, reduction, module) per tap
    features: list[str]  # the modules forward_features runs, in order
    head: list[str] | None  # the head's (None: no head to split off: a graph's decoder follows)
    classifier: str | None
    new_classifier: str | None  # reset_classifier's layer of width inputs

    @property
    def info_lines(self) -> list[str]:
        """FEATURE_INFO's items, one a line (exploded where ruff would)."""
        lines = []
        for channels, reduction, module in self.feature_info:
            line = f'    ({channels}, {reduction}, "{module}"),'
            lines += (
                [line] if len(line) <= 88 else ["    (", f"        {channels},", f"        {reduction},", f'        "{module}",', "    ),"]
            )
        return lines

    def init_lines(self) -> list[str]:
        """What the model's __init__ sets last."""
        lines = ["        self.feature_info = FeatureInfo(FEATURE_INFO, range(len(FEATURE_INFO)))"]
        if self.head is not None:
            lines.append("        self.head_hidden_size = self.get_submodule(CLASSIFIER).weight.shape[1]")
        return lines


def backbone_view(analysis: Analysis, names: dict[str, str]) -> BackboneView | None:
    """The view, or None where the features are no chain of modules."""
    found = backbone(analysis)
    steps = _names(found.steps, names)
    if steps is None or not found.taps:
        return None
    info = [(tap.channels, tap.reduction, names[tap.module]) for tap in found.taps if tap.module in names]
    if len(info) < len(found.taps):
        return None
    head = _names(found.head, names)
    classifier = dict(found.head or []).get(found.classifier) if found.classifier else None
    make = OPS[classifier.op].classifier if classifier is not None else None
    layer = make(classifier) if make is not None else None
    if head is None or layer is None:
        return BackboneView(info, steps, None, None, None)
    return BackboneView(info, steps, head, names[found.classifier], layer)


def _names(steps: list[tuple[str, Node]] | None, names: dict[str, str]) -> list[str] | None:
    """The modules' names, or None where one is not a module called on its input alone
    (a zero padding that the conv after it takes as its own ``padding=`` is no module)."""
    if steps is None:
        return None
    nodes = [node for _, node in steps]
    kept = [
        (key, node)
        for (key, node), before, after in zip(steps, [None, *nodes], [*nodes[1:], None])
        if key in names or not takes_pad(node, after, before)
    ]
    if not all(key in names and alone(node) for key, node in kept):
        return None
    return [names[key] for key, _ in kept]
