"""The Keras 3 backend: an analysed spec -> one plain Keras module (functional API,
channels_last) exposing ``create_model(**params) -> keras.Model``.

Rendering (``render``, jinja2 templates in ``templates/``) imports no framework; Keras is
imported only when a generated module is loaded. ``layer_names(plan)`` maps IR paths to
the Keras layer names the generated code uses (see :func:`.render.layer_names`);
:mod:`.weights` (imported when used) ports weights to and from archc's neutral format
through them, for ``archc verify`` and ``archc convert`` (the ``WeightPorting`` methods);
:mod:`.export` writes ``.keras`` files, :mod:`.applications` reads keras.applications
weights (``archc import``) and :mod:`.train` trains, each imported on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

from archc.codegen.backend import PortsWeightsVia, import_generated
from archc.passes.analysis import Analysis

from .render import layer_names, render

__all__ = ["KerasBackend", "layer_names"]


class KerasBackend(PortsWeightsVia):
    name = "keras"

    def render(self, analysis: Analysis) -> str:
        """The generated module's source text (deterministic, ruff-formatted)."""
        return render(analysis)

    def load(self, path: Path) -> Any:
        """Import a generated module from ``path``; importing it imports keras, whose
        backend is whatever ``KERAS_BACKEND`` says."""
        return import_generated(path)

    def count(self, model: Any) -> tuple[int, int]:
        """(trainable, non-trainable) weight sizes of a built keras.Model."""
        return (sum(math.prod(w.shape) for w in model.trainable_weights), sum(math.prod(w.shape) for w in model.non_trainable_weights))

    # -- weight porting (archc verify / convert): archc.codegen.backend.WeightPorting -------------

    checkpoint_suffixes = (".weights.h5",)

    def weights_module(self) -> ModuleType:
        from . import weights

        return weights

    # -- archc export, import, train: archc.codegen.backend.Exporting, Importing, Training ----------

    export_formats = {"keras": (".keras",)}
    import_sources = ("keras.applications",)

    def export(self, module: Any, model: Any, fmt: str, path: Path, x: Any, *, fold: bool) -> list[tuple[str, Any, Any]]:
        """A ``.keras`` file of ``model`` (see :func:`.export.export`)."""
        from .export import export

        return export(module, model, fmt, path, x, fold=fold)

    def import_weights(self, model: Any, analysis: Analysis, source: str, path: str | Path) -> int:
        """keras.applications weights (``.h5`` or ``.weights.h5``) into ``model`` by
        structure (:mod:`.applications`)."""
        from .applications import load_into

        return load_into(model, path)

    def train(self, config: Any) -> None:
        """tf.distribute training, alone or with TF_CONFIG (:func:`.train.run`)."""
        from .train import run

        run(config)
