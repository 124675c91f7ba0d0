"""The library's entry points, for users and the CLI: a spec path (+ overrides) -> the
analysed IR (``load``) -> generated files (``build``). Each lives in its pipeline stage;
nothing inside archc imports this module."""

from archc.codegen.backend import build
from archc.passes.pipeline import expectation_mismatches, load, spec_files

__all__ = ["build", "expectation_mismatches", "load", "spec_files"]
