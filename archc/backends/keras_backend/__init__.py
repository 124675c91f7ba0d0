"""The Keras 3 backend: an analysed spec -> one plain Keras module (functional API,
channels_last) exposing ``create_model(**params) -> keras.Model``.

Rendering (``render``, jinja2 templates in ``templates/``) imports no framework; Keras is
imported only when a generated module is loaded. ``layer_names(plan)`` maps IR paths to
the Keras layer names the generated code uses (see :func:`.render.layer_names`);
:mod:`.weights` (imported when used) ports weights to and from archc's neutral format
through them, for ``archc verify`` and ``archc convert`` (the ``WeightPorting`` methods).
"""

from __future__ import annotations

import math
from pathlib import Path
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
    weights_module = "archc.backends.keras_backend.weights"
