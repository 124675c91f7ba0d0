"""A ``.keras`` file of a generated Keras model (``archc export``), with the outputs the
core compares before it moves the file into place. Imported only when used (it imports
keras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras


def export(module: Any, model: Any, fmt: str, path: Path, x: Any, *, fold: bool) -> list[tuple[str, Any, Any]]:
    """``model`` (folded by ``module.for_inference`` when ``fold``) saved at ``path``;
    (what, reference, output) for the unfolded, folded and read-back outputs on ``x``."""
    folded = module.for_inference(model) if fold else model
    unfolded, y = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    folded.save(path)
    read = keras.saving.load_model(path).predict(x, verbose=0)
    checks = [("folded vs unfolded Keras model", unfolded, y)] if fold else []
    return [*checks, (".keras file vs unfolded Keras model", unfolded, read)]
