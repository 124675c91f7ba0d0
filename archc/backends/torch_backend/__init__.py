"""The PyTorch backend: an analysed spec -> one plain PyTorch module exposing
``create_model(**overrides) -> nn.Module``.

Rendering (:func:`.render.render`, jinja2 templates in ``templates/``) imports no
framework; torch is imported only when a generated module is loaded. Each layer is an
attribute of its block's class or of the module that holds its flow or repeat run
(:mod:`.scope`'s rule; residuals, branches and gates are statements of ``forward``):
:func:`qualified_names` maps IR paths to module names and :func:`modules_at` finds
those modules in a model. :mod:`.weights` (imported when
used) ports weights to and from archc's neutral format through that mapping, for
``archc verify`` and ``archc convert`` (the ``WeightPorting`` methods below); :mod:`.export`
writes ONNX and TorchScript files and :mod:`.train` trains, each imported on first use.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

from archc.codegen.backend import PortsWeightsVia, import_generated
from archc.codegen.plan import Plan
from archc.passes.analysis import Analysis

from .render import MODULE_ATTRIBUTES, qualified_names, render, torch_plan

__all__ = ["MODULE_ATTRIBUTES", "TorchBackend", "modules_at", "qualified_names", "torch_plan"]


class TorchBackend(PortsWeightsVia):
    name = "torch"

    def render(self, analysis: Analysis) -> str:
        """The generated module's source text (deterministic, ruff-formatted)."""
        return render(analysis)

    def load(self, path: Path) -> Any:
        """Import a generated module from ``path`` (this imports torch)."""
        return import_generated(path)

    def count(self, model: Any) -> tuple[int, int]:
        """(trainable, non-trainable) as Keras counts them: parameters that require
        grad; frozen parameters plus BN running means and variances (not torch's
        ``num_batches_tracked``)."""
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        stats = sum(b.numel() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
        return trainable, frozen + stats

    # -- weight porting (archc verify / convert): archc.codegen.backend.WeightPorting -------------

    checkpoint_suffixes = (".pt", ".pth")

    def weights_module(self) -> ModuleType:
        from . import weights

        return weights

    # -- archc export, archc train: archc.codegen.backend.Exporting, Training ---------------------

    export_formats = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}

    def export(self, module: Any, model: Any, fmt: str, path: Path, x: Any, *, fold: bool) -> list[tuple[str, Any, Any]]:
        """An ONNX or TorchScript file of ``model`` (see :func:`.export.export`)."""
        from .export import export

        return export(module, model, fmt, path, x, fold=fold)

    def train(self, config: Any) -> None:
        """DistributedDataParallel training, under torchrun or alone (:func:`.train.run`)."""
        from .train import run

        run(config)


def modules_at(model: Any, plan: Plan) -> dict[str, list[Any]]:
    """IR path -> its modules in ``model``: one, several inside repeats (in order), none
    where a param removed it (a shortcut of ``use_shortcut: $residual`` = false)."""
    modules = list(model.named_modules())
    found = {}
    for path, template in qualified_names(plan).items():
        pattern = re.compile(re.sub(r"\\\{\d+\\\}", r"\\d+", re.escape(template)))
        found[path] = [module for name, module in modules if pattern.fullmatch(name)]
    return found
