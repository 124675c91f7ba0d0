"""ONNX and TorchScript files of a generated torch model (``archc export``), with the
outputs the core compares before it moves the file into place. Imported only when used
(it imports torch; ONNX also onnxscript and onnxruntime, ``archc[export]``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from archc.syntax.errors import UserError


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


def export(module: Any, model: Any, fmt: str, path: Path, x: Any, *, fold: bool) -> list[tuple[str, Any, Any]]:
    """``model`` (folded by ``module.for_inference`` when ``fold``) as ``fmt`` at ``path``;
    (what, reference, output) for the unfolded, folded and read-back outputs on ``x``."""
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
        unfolded, y = _numpy(model(example)), _numpy(folded(example))
        names = list(y) if isinstance(y, dict) else ["output"]  # several outputs: one ONNX output each, by name
        with _quiet():
            if fmt == "onnx":
                torch.onnx.export(
                    folded,
                    (example,),
                    str(path),
                    input_names=["input"],
                    output_names=names,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            else:
                torch.jit.trace(folded, example, strict=not isinstance(y, dict)).save(str(path))
    checks = [("folded vs unfolded torch model", unfolded, y)] if fold else []
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        read = dict(zip(names, session.run(names, {session.get_inputs()[0].name: example.numpy()}), strict=True))
        read = read if isinstance(y, dict) else read["output"]
        checks += [("ONNX in onnxruntime vs torch", y, read), ("ONNX in onnxruntime vs unfolded torch model", unfolded, read)]
    else:
        with torch.no_grad():
            read = _numpy(torch.jit.load(str(path))(example))
        checks += [("TorchScript file vs unfolded torch model", unfolded, read)]
    return checks


def _numpy(out: Any) -> Any:
    """A model's output as numpy; several outputs as a dict by name."""
    return {name: _numpy(value) for name, value in out.items()} if isinstance(out, dict) else out.numpy()
