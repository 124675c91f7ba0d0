"""The graph examples (issue 21) that the torch and Keras backends cannot build yet:
the tests that build, export, draw or fuzz every bundled spec leave these out until the
backends render named tensors, several outputs and the new ops (resize, concat, add).
tests/test_graph_examples.py holds their counts, shapes and MACs (no framework needed).
Remove a name here once its example builds, and the tests take it up by themselves."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# stems of examples/*.yaml; nasnet: the torch backend renders neither its when: over tensor
# sizes nor its cells' two outputs yet (tests/test_nasnet.py builds it in Keras)
GRAPH_EXAMPLES: frozenset[str] = frozenset({"nasnet"})


def buildable(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without the graph examples, in order."""
    return [p for p in paths if not (p.parent.name == "examples" and p.stem in GRAPH_EXAMPLES)]
