"""The spectrum between regular and depthwise separable convolution, and `archc variants`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.ir.ops import SepConv, walk
from archc.tools.variants import run

ROOT = Path(__file__).parents[1]
XCEPTION = ROOT / "specs/xception.yaml"

# Input channels of Xception's 3x3 spatial convs (Figure 5), middle flow 8 x 3.
SPATIAL_CHANNELS = [64, 128, 128, 256, 256, 728] + [728] * 24 + [728, 728, 1024, 1536]


def test_the_ir_has_the_papers_separable_convs():
    analysis = load(XCEPTION)
    found = []
    for flow in analysis.net.flows.values():
        for node in walk(flow):
            if isinstance(node, SepConv):
                times = 8 if "/repeat/" in node.path else 1
                found += [analysis.shapes[node.path][0][2]] * times
    assert sorted(found) == sorted(SPATIAL_CHANNELS)


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_spectrum_matches_the_closed_form(s):
    """k*k*C*C/s spatial weights with s segments: the depthwise total plus the differences."""
    depthwise = load(XCEPTION).total.trainable
    closed_form = depthwise + sum(3 * 3 * c * c // s - 3 * 3 * c for c in SPATIAL_CHANNELS)
    assert load(XCEPTION, {"segments": str(s)}).total.trainable == closed_form


def test_sweep_writes_specs_tables_and_lists_invalid_combinations(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "variants",
            str(XCEPTION),
            "--sweep",
            "segments=4,16,depthwise",
            "--sweep",
            "residual=true,false",
            "-o",
            str(tmp_path),
            "--plot",
            str(tmp_path / "plot.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "variants.csv").open()))
    assert [(r["segments"], r["residual"]) for r in rows] == [
        ("4", "True"),
        ("4", "False"),
        ("16", "True"),
        ("16", "False"),
        ("depthwise", "True"),
        ("depthwise", "False"),
    ]
    bad = [r for r in rows if r["segments"] == "16"]
    assert all(r["status"].startswith("invalid: expected segments that divide the 728 input channels") for r in bad)
    good = {(r["segments"], r["residual"]): int(r["trainable"]) for r in rows if r["status"] == "ok"}
    assert good[("depthwise", "True")] == 22_855_952
    # each written spec compiles on its own, by default, to the counts in the table
    written = sorted(tmp_path.glob("*.yaml"))
    assert len(written) == 4
    for path in written:
        row = next(r for r in rows if r["variant"] == path.stem)
        assert load(path).total.trainable == int(row["trainable"])
    assert (tmp_path / "variants.md").read_text().startswith("| variant | segments | residual |")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_values_are_checked_like_overrides(tmp_path):
    result = CliRunner().invoke(main, ["variants", str(XCEPTION), "--sweep", "middle_repeats=2,many", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "params.middle_repeats: expected an integer, found 'many' (from the override middle_repeats=many)" in result.output
    assert not list(tmp_path.glob("*"))


def test_sweep_and_p_share_one_path(tmp_path):
    swept = run(XCEPTION, {"between": ["elu"]}, {"middle_repeats": "2"}).variants[0].analysis
    direct = load(XCEPTION, {"between": "elu", "middle_repeats": "2"})
    assert swept.total == direct.total
    assert swept.net.params == direct.net.params


SAMPLE = {"segments": ["1", "2", "4", "8", "depthwise"], "residual": ["true", "false"]}


@pytest.mark.parametrize("backend_name", ["torch", "keras"])
def test_every_variant_of_a_sample_sweep_compiles_with_the_backend(tmp_path, backend_name):
    """Each variant, rendered on its own at a reduced input size, builds a model whose
    counts equal the IR's and which runs a forward pass."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    pytest.importorskip(backend_name)
    import numpy as np

    from archc.codegen.backend import get

    backend = get(backend_name)
    result = run(XCEPTION, SAMPLE, {"middle_repeats": "2"})
    assert len(result.variants) == 10 and all(v.analysis for v in result.variants)
    for variant in result.variants:
        small = load(XCEPTION, {**variant.analysis.net.params}, input_size=(71, 71))
        counts = (small.total.trainable, small.total.non_trainable)
        assert counts == (variant.analysis.total.trainable, variant.analysis.total.non_trainable)  # input size changes no count
        path = tmp_path / f"{variant.name}_{backend_name}.py"
        path.write_text(backend.render(small))
        model = backend.load(path).create_model()
        assert backend.count(model) == counts, variant.name
        if backend_name == "torch":
            import torch

            with torch.no_grad():
                out = model.eval()(torch.zeros(1, 3, 71, 71))
        else:
            out = model(np.zeros((1, 71, 71, 3), dtype="float32"), training=False)
        assert tuple(out.shape) == (1, 1000)
        del model
