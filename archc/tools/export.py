"""Inference exports (``archc export``): a generated model with its batch norms folded,
saved as ONNX, TorchScript or a Keras ``.keras`` file, checked before it is written.

The inference model is the generated module's own ``for_inference`` (batch norms folded
and average pools swapped from the IR's tables, :mod:`archc.passes.fold`; in torch also
channels_last weights), so the CLI and a user's ``for_inference(create_model())`` give
the same model. Each export runs one random input through the unfolded model, the folded
one and the saved file read back (for ONNX in onnxruntime), and is written only when
every output is within the tolerance of the unfolded model's.

Nothing here imports a framework at import time.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.codegen.backend import import_generated, module_name
from archc.passes.analysis import Analysis
from archc.passes.fold import batch_norms, folded_instances, swapped_instances
from archc.syntax.errors import UserError
from archc.tools.verify import backend_for_file, output_difference, porting_backends, random_weights, read_checkpoint

TOLERANCE = 1e-4  # largest output difference allowed, relative to the largest |unfolded output|

# format -> (the backend it exports from, the file name endings it writes)
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx": ("torch", (".onnx",)),
    "torchscript": ("torch", (".pt", ".ts")),
    "keras": ("keras", (".keras",)),
}


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
    return import_generated(path)


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

    if fmt not in FORMATS:
        raise UserError(f"expected a format ({', '.join(FORMATS)}), found '{fmt}'")
    target_name, suffixes = FORMATS[fmt]
    out = Path(out)
    if not out.name.lower().endswith(suffixes):
        raise UserError(f"expected an output file name ending in {' or '.join(suffixes)} for {fmt}, found '{out}'")
    able, _ = porting_backends()
    if target_name not in able:
        raise UserError(f"expected the {target_name} backend for --format {fmt}, found it not installed")
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
            if target_name == "torch":
                checks = _export_torch(module, model, fold, fmt, x, tmp)
            else:
                checks = _export_keras(module, model, fold, x, tmp)
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


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and tracer warnings, not ours to print."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _export_torch(module: Any, model: Any, fold: bool, fmt: str, x: Any, path: Path) -> list[tuple[str, Any, Any]]:
    import torch

    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ModuleNotFoundError as exc:
            raise UserError(f"expected {exc.name} for --format onnx (pip install 'archc[export]'), found it not installed") from None
    model.train(False)  # inference mode
    folded = module.for_inference(copy.deepcopy(model)) if fold else model
    example = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        unfolded, y = model(example).numpy(), folded(example).numpy()
        with _quiet():
            if fmt == "onnx":
                torch.onnx.export(
                    folded,
                    (example,),
                    str(path),
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            else:
                torch.jit.trace(folded, example).save(str(path))
    checks = [("folded vs unfolded torch model", unfolded, y)] if fold else []
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        read = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        checks += [("ONNX in onnxruntime vs torch", y, read), ("ONNX in onnxruntime vs unfolded torch model", unfolded, read)]
    else:
        with torch.no_grad():
            read = torch.jit.load(str(path))(example).numpy()
        checks += [("TorchScript file vs unfolded torch model", unfolded, read)]
    return checks


def _export_keras(module: Any, model: Any, fold: bool, x: Any, path: Path) -> list[tuple[str, Any, Any]]:
    import keras

    folded = module.for_inference(model) if fold else model
    unfolded, y = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    folded.save(path)
    read = keras.saving.load_model(path).predict(x, verbose=0)
    checks = [("folded vs unfolded Keras model", unfolded, y)] if fold else []
    return [*checks, (".keras file vs unfolded Keras model", unfolded, read)]
