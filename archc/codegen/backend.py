"""Backends are plugins: objects registered under the entry-point group ``archc.backends``.

A backend is one package with one entry point (docs/backends.md). :class:`Backend` is what
every backend implements; :class:`WeightPorting`, :class:`Exporting`, :class:`Importing`
and :class:`Training` are optional, and a command that needs one names the backend and
what it lacks (:func:`require`). Rendering needs no framework; a backend imports its
framework only in ``load`` and ``count`` and in the optional methods, so that listing or
rendering stays fast and framework-free. The core never imports a backend's modules:
it calls these methods.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from archc.passes.analysis import Analysis
from archc.passes.pipeline import load
from archc.syntax.errors import UserError, did_you_mean

GROUP = "archc.backends"


@runtime_checkable
class Backend(Protocol):
    name: str  # "torch", "keras": the --backend value and the file suffix

    def render(self, analysis: Analysis) -> str:
        """The generated module's source text; imports no framework."""

    def load(self, path: Path) -> Any:
        """Import a generated module from ``path`` (this imports the framework)."""

    def count(self, model: Any) -> tuple[int, int]:
        """(trainable, non-trainable) parameter counts as the framework sees them."""


@runtime_checkable
class WeightPorting(Protocol):
    """Optional methods of a backend, for ``archc verify``, ``convert``, ``export`` and ``import``.

    They speak archc's framework-neutral weight format (:mod:`archc.passes.instances`):
    ``{instance key: {role: numpy array}}`` for every enabled conv, sepconv, bn and dense
    instance (one per repeat index), in the IR's layout (Keras's). A backend that lacks
    them still renders, loads and counts; verify and convert name it and leave it out.
    ``model`` is what the generated module's ``create_model()`` returns.
    """

    checkpoint_suffixes: tuple[str, ...]  # file name endings of its native checkpoints ('.pt', '.weights.h5')

    def export_weights(self, model: Any, analysis: Analysis) -> dict[str, dict[str, Any]]:
        """The model's weights in the neutral format (copies, not views)."""

    def load_weights(self, model: Any, analysis: Analysis, weights: dict[str, dict[str, Any]]) -> None:
        """Set the model's weights from the neutral format: every instance and role the
        model has must be given, with its exact shape, and nothing else."""

    def instance_counts(self, model: Any, analysis: Analysis) -> dict[str, tuple[int, int]]:
        """instance key -> (trainable, non-trainable) as the framework holds them, for
        every weighted instance (what ``count`` sums, split by instance)."""

    def activations(self, model: Any, analysis: Analysis, x: Any, keys: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
        """Run ``x`` (a float32 numpy array, N x H x W x C whatever the framework's own
        layout) in inference mode: (the output, {instance key: that instance's output}),
        feature maps N x H x W x C, for the instances in ``keys`` (default: all) that have
        a layer or module of their own. Numpy arrays."""

    def save_checkpoint(self, model: Any, path: Path) -> None:
        """The framework's own weights file (a torch state_dict, a Keras .weights.h5)."""

    def load_checkpoint(self, model: Any, path: Path) -> None:
        """Read what ``save_checkpoint`` writes into the model."""


@runtime_checkable
class Exporting(Protocol):
    """Optional: inference files (``archc export``); needs :class:`WeightPorting` too."""

    export_formats: Mapping[str, tuple[str, ...]]  # format -> the file name endings it writes

    def export(self, module: Any, model: Any, fmt: str, path: Path, x: Any, *, fold: bool) -> list[tuple[str, Any, Any]]:
        """Write ``model`` (``module.create_model()``, weights set) to ``path`` as ``fmt``,
        folded first by the generated ``module.for_inference`` when ``fold``. ``x`` is a
        float32 numpy input, N x H x W x C: run it through the unfolded model, the folded
        one and the file read back, and return (what, reference output, output) for each
        comparison; the caller checks them and moves the file into place."""


@runtime_checkable
class Importing(Protocol):
    """Optional: pretrained weights from another library's files (``archc import``)."""

    import_sources: tuple[str, ...]  # the --from values it reads ("keras.applications")

    def import_weights(self, model: Any, analysis: Analysis, source: str, path: Path) -> int:
        """Set ``model``'s weights from ``source``'s file ``path``, or raise a one-line
        UserError naming the first layer that does not fit; returns the number of layers
        with weights."""


@runtime_checkable
class Training(Protocol):
    """Optional: ``archc train``."""

    def train(self, config: Any) -> None:
        """Run one training run (an :class:`archc.training.kit.RunConfig`), importing its
        trainer and framework only now."""


WEIGHT_PORTING = (
    "checkpoint_suffixes",
    "export_weights",
    "load_weights",
    "instance_counts",
    "activations",
    "save_checkpoint",
    "load_checkpoint",
)


def missing_weight_porting(backend: Any) -> list[str]:
    """The :class:`WeightPorting` members ``backend`` lacks (empty: it has them all)."""
    return [name for name in WEIGHT_PORTING if not hasattr(backend, name)]


def require(backend: Any, does: str, members: tuple[str, ...]) -> None:
    """A one-line UserError naming ``backend`` and the ``members`` it lacks for what a
    command needs (``does``: 'trains', 'exports', 'ports weights')."""
    missing = [name for name in members if not hasattr(backend, name)]
    if missing:
        raise UserError(f"expected a backend that {does}, found '{backend.name}' without {', '.join(missing)}")


class PortsWeightsVia:
    """:class:`WeightPorting` by delegation to the module the backend's own
    ``weights_module()`` imports (a plain lazy import, so the framework loads only when
    weights move). The module defines ``export``, ``load``, ``counts``, ``activations``,
    ``save_checkpoint`` and ``load_checkpoint``."""

    checkpoint_suffixes: tuple[str, ...]
    weights_module: Callable[[], ModuleType]  # a method of the backend: ``from . import weights``

    def export_weights(self, model: Any, analysis: Analysis) -> dict[str, dict[str, Any]]:
        return self.weights_module().export(model, analysis)

    def load_weights(self, model: Any, analysis: Analysis, values: dict[str, dict[str, Any]]) -> None:
        self.weights_module().load(model, analysis, values)

    def instance_counts(self, model: Any, analysis: Analysis) -> dict[str, tuple[int, int]]:
        return self.weights_module().counts(model, analysis)

    def activations(self, model: Any, analysis: Analysis, x: Any, keys: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.weights_module().activations(model, analysis, x, keys)

    def save_checkpoint(self, model: Any, path: Path) -> None:
        self.weights_module().save_checkpoint(model, path)

    def load_checkpoint(self, model: Any, path: Path) -> None:
        self.weights_module().load_checkpoint(model, path)


def import_generated(path: str | Path) -> Any:
    """Import a generated module from its file (under a name unique to that file), as
    every backend's ``load`` does."""
    import hashlib
    import importlib.util
    import sys

    path = Path(path).resolve()
    name = f"archc_generated_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import a module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registered() -> dict[str, Any]:
    """name -> entry point, for every installed backend."""
    return {ep.name: ep for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)}


def get(name: str) -> Backend:
    eps = registered()
    if name not in eps:
        raise UserError(f"expected a backend ({', '.join(eps) or 'none installed'}), found '{name}'{did_you_mean(name, eps)}")
    backend = eps[name].load()
    return backend() if isinstance(backend, type) else backend


def module_name(analysis: Analysis, backend: str) -> str:
    """The generated file's stem: the spec name as an identifier, then the backend."""
    from archc.codegen.naming import identifier

    return f"{identifier(analysis.net.name, fallback='model')}_{backend}"


def as_new_file(tmp: str) -> None:
    """Give a file from ``tempfile.mkstemp`` (mode 0600) the mode an ordinary new file
    gets (0666 less the umask), before it is moved into place."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)


def write_all(files: dict[Path, str]) -> None:
    """Write every file or none: each goes to a temporary file first, then all are moved
    into place, so a failure never leaves half-written output."""
    staged = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
            as_new_file(tmp)
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def build(path: str | Path, backends: list[str], out_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> list[Path]:
    """Render ``path`` with each backend into ``out_dir``; all files or none are written."""
    analysis = load(path, overrides)
    files = {Path(out_dir) / f"{module_name(analysis, name)}.py": get(name).render(analysis) for name in backends}
    write_all(files)
    return list(files)
