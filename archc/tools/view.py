"""The model in Netron: export the generated torch model to ONNX and serve it.

torch, onnx/onnxscript and netron are imported here only, on first use (``archc[view]``
installs netron and the ONNX exporter's packages; the torch backend brings torch).
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from archc.passes.analysis import Analysis
from archc.syntax.errors import UserError


def export_onnx(analysis: Analysis, path: str | Path) -> Path:
    """Render the spec with the torch backend, build the model (random weights, eval
    mode) and export it with one image of the spec's input size as ``path``."""
    from archc.codegen.backend import get, module_name, write_all

    backend = get("torch")
    path = Path(path)
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so before torch fails deep inside)
        import torch
    except ImportError as exc:
        raise UserError(f"expected {exc.name} to export ONNX (pip install 'archc[view]'), found it missing") from None
    with tempfile.TemporaryDirectory(prefix="archc-view-") as tmp:
        source = Path(tmp) / f"{module_name(analysis, 'torch')}.py"
        write_all({source: backend.render(analysis)})
        model = backend.load(source).create_model().train(False)  # inference mode
        height, width, channels = analysis.net.input
        image = torch.zeros(1, channels, height, width)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # notes about optional torchvision ops
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside the exporter, not ours
            program = torch.onnx.export(model, (image,), input_names=["image"], output_names=["output"], dynamo=True, verbose=False)
    try:
        program.save(str(path), external_data=False)
    except OSError as exc:
        raise UserError(f"-o: expected a writable file, found {path} ({exc.strerror or exc})") from None
    return path


@contextmanager
def serving(onnx_file: str | Path, host: str = "localhost", port: int = 0, browse: bool = False) -> Iterator[tuple[str, int]]:
    """Serve ``onnx_file`` with Netron at (host, port) (port 0: a free one) while the
    block runs, then stop the server: (host, port) is what it listens on. Netron serves
    its page at ``/`` and the model at ``/data/<file name>``."""
    try:
        import netron
    except ImportError:
        raise UserError("expected netron for archc view (pip install 'archc[view]'), found it missing") from None
    logging.getLogger("netron.server").setLevel(logging.WARNING)  # archc says where it serves
    try:
        address = netron.serve(str(onnx_file), address=(host, port), browse=browse)
    except OSError as exc:
        raise UserError(f"--port: expected a port to listen on at {host}, found {port} ({exc.strerror or exc})") from None
    try:
        yield address
    finally:
        netron.stop(address)


def wait_for_stop_signal(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> int:
    """Block until one of ``signals`` arrives and return it. The handlers are installed
    here, whatever the process inherited: a shell starts a background job with SIGINT
    ignored (and so does a pytest-xdist worker's child), and Ctrl-C must still stop
    the server."""
    received: list[int] = []
    arrived = threading.Event()

    def stop(signum, frame):
        received.append(signum)
        arrived.set()

    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        while not arrived.wait(0.1):  # a timed wait lets the main thread run the handler
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return received[0]
