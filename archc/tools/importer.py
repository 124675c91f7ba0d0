"""Pretrained weights from another library's files (``archc import``), read by the backend
that knows them (its ``import_sources`` and ``import_weights``,
:class:`archc.codegen.backend.Importing`: the Keras backend reads keras.applications
files, matched by structure).

The importing backend's generated model is the bridge for any target: the weights are
loaded there and, for another target, carried on through archc's neutral format as
``archc convert`` does; the checkpoint is written only when complete. Nothing here
imports a framework.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from archc.codegen.backend import get, registered
from archc.passes.analysis import Analysis
from archc.syntax.errors import UserError
from archc.tools.verify import porting_backends, save_checkpoint


def importers() -> dict[str, str]:
    """source (a --from value) -> the backend that reads it, over the installed backends."""
    out: dict[str, str] = {}
    for name in registered():
        for source in getattr(get(name), "import_sources", ()):
            out.setdefault(source, name)
    return out


def import_weights(analysis: Analysis, source: str, src: str | Path, dst: str | Path, to: str) -> int:
    """Read ``source``'s weights file ``src`` into the generated model of ``analysis`` of
    the backend that reads it, and write ``to``'s checkpoint (a Keras ``.weights.h5``, or
    a torch ``state_dict``) to ``dst``, only when complete. Returns the number of layers
    with weights."""
    from archc.tools.export import generated_module

    offered = importers()
    if source not in offered:
        raise UserError(f"expected a source of weights ({', '.join(offered) or 'none installed'}), found '{source}'")
    reader = offered[source]
    able, unable = porting_backends([reader, to] if to != reader else [reader])
    for name, missing in unable.items():
        raise UserError(f"expected a backend that ports weights, found '{name}' without {', '.join(missing)}")
    dst = Path(dst)
    target = able[to]
    if not dst.name.lower().endswith(target.checkpoint_suffixes):
        raise UserError(f"expected an output file name ending in {' or '.join(target.checkpoint_suffixes)} for {to}, found '{dst}'")
    with tempfile.TemporaryDirectory(prefix="archc-import-") as folder:
        model: Any = generated_module(able[reader], analysis, folder).create_model()
        n = able[reader].import_weights(model, analysis, source, src)
        if to != reader:
            read = model
            model = generated_module(target, analysis, folder).create_model()
            target.load_weights(model, analysis, able[reader].export_weights(read, analysis))
        save_checkpoint(target, model, dst)
    return n
