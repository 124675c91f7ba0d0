"""Pretrained weights from another library's files (``archc import``), read by the backend
that knows them (its ``import_sources`` and ``import_weights``,
:class:`archc.codegen.backend.Importing`: the Keras backend reads keras.applications
files, matched by structure).

The importing backend's generated model is the bridge for any target: the weights are
loaded there and, for another target, carried on through archc's neutral format as
``archc convert`` does; the checkpoint is written only when complete. With a source
architecture (``--partial``), the file is read into that architecture's model and its
tensors carried into the spec's variant where they fit (:mod:`archc.tools.transfer`).
Nothing here imports a framework.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from archc.codegen.backend import get, registered
from archc.passes.analysis import Analysis
from archc.syntax.errors import UserError
from archc.tools.transfer import Report, transfer
from archc.tools.verify import porting_backends, save_checkpoint


def importers() -> dict[str, str]:
    """source (a --from value) -> the backend that reads it, over the installed backends."""
    out: dict[str, str] = {}
    for name in registered():
        for source in getattr(get(name), "import_sources", ()):
            out.setdefault(source, name)
    return out


def import_weights(
    analysis: Analysis, source: str, src: str | Path, dst: str | Path, to: str, partial: Analysis | None = None
) -> tuple[int, Report | None]:
    """Read ``source``'s weights file ``src`` into the generated model of ``analysis`` of
    the backend that reads it, and write ``to``'s checkpoint (a Keras ``.weights.h5``, or
    a torch ``state_dict``) to ``dst``, only when complete. With ``partial`` (the
    architecture the file holds), read it into that one and carry over what fits.
    Returns the number of layers with weights read, and the transfer's report."""
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
    report = None
    with tempfile.TemporaryDirectory(prefix="archc-import-") as folder:
        held = partial or analysis
        (Path(folder) / "file").mkdir()
        model: Any = generated_module(able[reader], held, Path(folder) / "file").create_model()
        n = able[reader].import_weights(model, held, source, src)
        if partial is not None or to != reader:
            given = able[reader].export_weights(model, held)
            model = generated_module(target, analysis, folder).create_model()
            if partial is not None:
                given, report = transfer(given, target.export_weights(model, analysis), analysis)
            target.load_weights(model, analysis, given)
        save_checkpoint(target, model, dst)
    return n, report
