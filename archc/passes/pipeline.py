"""The front of the pipeline: a spec path (+ overrides) -> the analysed IR, and its ``expect:`` check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from archc.ir.ops import Network
from archc.ir.resolve import compile_spec
from archc.passes.analysis import Analysis, analyse
from archc.syntax.errors import Location, SpecError


def spec_files(paths: list[str] | tuple[str, ...]) -> list[Path]:
    """Expand directories to the ``*.yaml`` / ``*.yml`` files in them, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise SpecError(Location(str(p), 1, 1, ""), "expected a folder with .yaml specs, found none")
            out.extend(found)
        else:
            out.append(p)
    return out


def load(path: str | Path, overrides: Mapping[str, Any] | None = None, input_size: tuple[int, int] | None = None) -> Analysis:
    """Compile and analyse one spec: the IR with every shape and count. ``input_size``
    (height, width) replaces the spec's input size (smoke runs, fast tests); shape
    inference checks that the network still fits it."""
    return analyse(at_input_size(compile_spec(str(path), overrides), input_size))


def at_input_size(net: Network, input_size: tuple[int, int] | None) -> Network:
    """``net`` with its input's height and width replaced (None: as it is): the size as
    given, no longer the params' expressions (the generated code's too)."""
    if input_size is None:
        return net
    refs = {i: ref for i, ref in net.input_refs.items() if i == 2}
    return net.model_copy(update={"input": (*input_size, net.input[2]), "input_refs": refs})


def expectation_mismatches(analysis: Analysis) -> list[tuple[str, Any, Any]]:
    """(what, expected, found) for every ``expect:`` entry that the counts contradict."""
    expect = analysis.net.expect
    if expect is None:
        return []
    found = {
        "trainable": analysis.total.trainable,
        "non_trainable": analysis.total.non_trainable,
        "macs": analysis.total.macs,
        "output": list(analysis.output),
    }
    return [(key, value, found[key]) for key, value in expect.model_dump(exclude_none=True).items() if value != found[key]]
