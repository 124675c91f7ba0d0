"""Inference exports (``archc export``): a generated model with its batch norms folded,
saved as ONNX, TorchScript or a Keras ``.keras`` file, checked before it is written.

The inference model is the generated module's own ``for_inference`` (batch norms folded
and average pools swapped from the IR's tables, :mod:`archc.passes.fold`; in torch also
channels_last weights), so the CLI and a user's ``for_inference(create_model())`` give
the same model. Each export runs one random input through the unfolded model, the folded
one and the saved file read back (for ONNX in onnxruntime), and is written only when
every output is within the tolerance of the unfolded model's.

The formats are the backends' (their ``export_formats`` and ``export``,
:class:`archc.codegen.backend.Exporting`); this module loads the weights, checks the
outputs and writes the file, and imports no framework.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.codegen.backend import WEIGHT_PORTING, get, module_name, registered, require
from archc.passes.analysis import Analysis
from archc.passes.fold import batch_norms, folded_instances, swapped_instances
from archc.syntax.errors import UserError
from archc.tools.verify import backend_for_file, output_difference, porting_backends, random_weights, read_checkpoint

TOLERANCE = 1e-4  # largest output difference allowed, relative to the largest |unfolded output|


def formats() -> dict[str, tuple[str, tuple[str, ...]]]:
    """format -> (the backend that writes it, the file name endings it writes), over the
    installed backends (the first backend, by name, that offers a format writes it)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name in registered():
        for fmt, suffixes in getattr(get(name), "export_formats", {}).items():
            out.setdefault(fmt, (name, tuple(suffixes)))
    return out


class ExportCheckFailed(Exception):
    """The exported model's outputs differ from the unfolded model's (one line)."""


@dataclass
class ExportResult:
    path: Path
    format: str
    folded: int  # batch norm instances folded
    swapped: int  # average pools moved after their 1x1 conv
    batch_norms: int  # batch norm instances in the network
    weights: str  # where the weights came from
    checks: list[tuple[str, float]] = field(default_factory=list)  # (what, max relative difference)


def generated_module(backend: Any, analysis: Analysis, folder: str | Path) -> Any:
    """Render ``analysis`` with ``backend`` into ``folder`` and import the module."""
    path = Path(folder) / f"{module_name(analysis, backend.name)}.py"
    path.write_text(backend.render(analysis), encoding="utf-8")
    return backend.load(path)


def export(
    analysis: Analysis,
    fmt: str,
    out: str | Path,
    weights: str | Path | None = None,
    *,
    fold: bool = True,
    tolerance: float = TOLERANCE,
    batch: int = 2,
    seed: int = 0,
) -> ExportResult:
    """Build ``analysis`` with the format's backend, load ``weights`` (a torch
    ``state_dict`` or a Keras ``.weights.h5`` of this spec, ported across when the
    backends differ; None: archc's seeded random weights), fold its batch norms (unless
    ``fold`` is false), save it to ``out`` and check it. Raises ExportCheckFailed, and
    writes nothing, when an output differs by more than ``tolerance``."""
    import numpy as np

    offered = formats()
    if fmt not in offered:
        raise UserError(f"expected a format ({', '.join(offered)}), found '{fmt}'")
    target_name, suffixes = offered[fmt]
    out = Path(out)
    if not out.name.lower().endswith(suffixes):
        raise UserError(f"expected an output file name ending in {' or '.join(suffixes)} for {fmt}, found '{out}'")
    require(get(target_name), "exports", ("export", *WEIGHT_PORTING))
    able, _ = porting_backends()
    target = able[target_name]
    source_name = backend_for_file(weights, able) if weights is not None else target_name

    with tempfile.TemporaryDirectory(prefix="archc-export-") as folder:
        module = generated_module(target, analysis, folder)
        model = module.create_model()
        if weights is None:
            target.load_weights(model, analysis, random_weights(analysis, seed))
            origin = f"random (seed {seed}; give --weights for a trained model)"
        elif source_name == target_name:
            read_checkpoint(target, model, weights, analysis)
            origin = str(weights)
        else:
            source = able[source_name]
            other = generated_module(source, analysis, folder).create_model()
            read_checkpoint(source, other, weights, analysis)
            target.load_weights(model, analysis, source.export_weights(other, analysis))
            origin = f"{weights} ({source_name} -> {target_name})"

        h, w, c = analysis.net.input
        x = np.random.default_rng(seed + 1).standard_normal((batch, h, w, c)).astype(np.float32)
        folded, swapped = (folded_instances(analysis), swapped_instances(analysis)) if fold else (0, 0)
        result = ExportResult(out, fmt, folded, swapped, batch_norms(analysis), origin)
        tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            checks = target.export(module, model, fmt, tmp, x, fold=fold)
            result.checks = [(what, output_difference(ref, y).rel) for what, ref, y in checks]
            bad = [(what, rel) for what, rel in result.checks if not rel <= tolerance]
            if bad:
                what, rel = bad[0]
                raise ExportCheckFailed(f"export check failed: {what}: relative difference {rel:.2e} > {tolerance:g}; {out} not written")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    return result
