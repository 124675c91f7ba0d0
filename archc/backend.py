"""Backends are plugins: objects registered under the entry-point group ``archc.backends``.

Rendering needs no framework; a backend imports its framework only in ``load`` and
``count``, so that listing or rendering stays fast and framework-free.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .analysis import Analysis
from .errors import UserError, did_you_mean

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
    from .naming import identifier

    return f"{identifier(analysis.net.name, fallback='model')}_{backend}"


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
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
