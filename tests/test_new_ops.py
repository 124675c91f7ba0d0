"""The ops added for the modern families (identity, zero_pad, gate, layer_norm,
layer_scale, drop_path, the hard/smooth activations, depthwise, rescale, normalize) and
repeats whose body grows the channels: shapes and counts in the IR, the same counts in
both backends, the same outputs in both (``archc verify``), and a torch training step.
The families in examples/ (DenseNet-121, ConvNeXt-Tiny, MobileNetV3 small and large) are held to keras.applications
weight for weight, at a small input so that the tests stay small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.passes.instances import instances
from archc.syntax.errors import SpecError
from archc.tools.verify import build_model

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).parents[1]
DENSENET = ROOT / "examples/densenet.yaml"

NEW_OPS = """\
name: new_ops
input: [20, 20, 3]
params:
  growth: 4
blocks:
  dense_block:
    args: [k]
    body:
      - repeat:
          times: 2
          body:
            - branches:
                keep: [identity]
                new: [bn, act: relu, conv: {filters: $k, kernel: 3, padding: same, bias: false}]
flows:
  pre:
    - rescale: {scale: 0.5, offset: -1.0}
    - normalize
    - normalize: {mean: [0.1, 0.2, 0.3], variance: [0.5, 1.0, 2.0]}
    - zero_pad: [[1, 2], [0, 1]]
    - conv: {filters: 8, kernel: 3, stride: 2}
    - layer_norm: {epsilon: 1.0e-6}
    - act: hard_swish
  body:
    - depthwise: {kernel: 3, padding: same, depth_multiplier: 2}
    - act: swish
    - gate:
        - global_avg_pool: {keepdims: true}
        - conv: {filters: 4, kernel: 1}
        - act: relu
        - conv: {filters: 16, kernel: 1}
        - act: hard_sigmoid
    - residual:
        body:
          - conv: {filters: 16, kernel: 1}
          - act: gelu
          - layer_scale: {init: 0.5}
          - drop_path: 0.2
    - repeat:
        times: 3
        body:
          - branches:
              keep: [identity]
              new: [bn, conv: {filters: $growth, kernel: 3, padding: same}]
    - dense_block: {k: 2}
    - depthwise: {kernel: 2, stride: 2, bias: false}
  head:
    - global_avg_pool
    - layer_norm
    - dense: 5
"""


@pytest.fixture(scope="module")
def new_ops(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("new_ops") / "new_ops.yaml"
    path.write_text(NEW_OPS)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- the IR (no framework) --------------------------------------------------------------------


def test_shapes_and_counts_of_the_new_ops(new_ops):
    a = load(new_ops)
    s = a.shapes
    assert s["pre/zero_pad1"] == ((20, 20, 3), (23, 21, 3))
    assert s["pre/conv1"][1] == (11, 10, 8)
    assert s["body/depthwise1"][1] == (11, 10, 16)
    assert s["body/gate1/body/global_avg_pool1"][1] == (1, 1, 16)
    assert s["body/gate1"][1] == (11, 10, 16)
    assert s["body/repeat1"] == ((11, 10, 16), (11, 10, 28))  # 3 runs of +4 channels
    assert s["body/dense_block1"][1] == (11, 10, 32)  # 2 runs of +2
    c = a.counts
    assert (c["pre/normalize1"].trainable, c["pre/normalize1"].non_trainable) == (0, 3 + 3 + 1)  # mean, variance, count
    assert c["pre/normalize2"].total == 0  # given constants are no weights
    assert c["pre/layer_norm1"].trainable == 2 * 8
    assert c["body/depthwise1"].trainable == 3 * 3 * 8 * 2 + 16
    assert c["body/residual1"].trainable == 16 * 16 + 16 + 16  # conv, bias, layer scale
    # the repeat counts each run with its own input: BN over 16, 20, 24 channels
    bn = [2 * ch for ch in (16, 20, 24)]
    convs = [9 * ch * 4 + 4 for ch in (16, 20, 24)]
    assert c["body/repeat1"].trainable == sum(bn) + sum(convs)
    assert c["body/repeat1"].non_trainable == sum(bn)


def test_instances_of_a_growing_repeat_see_their_own_input(new_ops):
    by_key = {i.key: i for i in instances(load(new_ops))}
    for i, ch in enumerate((16, 20, 24)):
        conv = by_key[f"body/repeat1[{i}]/branches1/new/conv1"]
        assert conv.input[-1] == ch and conv.output[-1] == 4


@pytest.mark.parametrize(
    "spec, counts", [("densenet", (7_978_856, 83_648)), ("convnext", (28_589_128, 0)), ("mobilenet_v3", (2_542_856, 12_112))]
)
def test_family_counts_are_keras_applications(spec, counts):
    a = load(ROOT / f"examples/{spec}.yaml")
    assert (a.total.trainable, a.total.non_trainable) == counts


# -- the backends -------------------------------------------------------------------------------


def test_backends_count_what_the_ir_counts(new_ops, tmp_path):
    from archc.codegen.backend import get

    a = load(new_ops)
    for name in ("torch", "keras"):
        backend = get(name)
        assert backend.count(build_model(backend, a, tmp_path)) == (a.total.trainable, a.total.non_trainable), name


def test_verify_passes_for_the_new_ops(new_ops):
    result = run("verify", new_ops)
    assert result.exit_code == 0, result.output
    assert "ok: counts agree and outputs agree within 0.0001 relative" in result.output


@pytest.mark.parametrize("spec", ["new_ops", "densenet", "convnext", "mobilenet_v3"])
def test_generated_torch_models_train(spec, new_ops, tmp_path):
    """A forward and backward pass in training mode (drop path active) at 32x32 reaches
    every weight."""
    import torch

    from archc.codegen.backend import get

    path = new_ops if spec == "new_ops" else ROOT / f"examples/{spec}.yaml"
    a = load(path, input_size=None if spec == "new_ops" else (32, 32))
    model = build_model(get("torch"), a, tmp_path)
    model.train()
    x = torch.randn(2, a.net.input[2], *a.net.input[:2])
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:3]


@pytest.mark.parametrize("spec", ["densenet", "convnext", "mobilenet_v3"])
def test_families_verify_across_backends(spec, tmp_path):
    small = tmp_path / f"{spec}.yaml"
    small.write_text((ROOT / f"examples/{spec}.yaml").read_text().replace("input: [224, 224, 3]", "input: [32, 32, 3]"))
    result = run("verify", small, "--batch", "1")
    assert result.exit_code == 0, result.output
    assert "ok: counts agree and outputs agree within 0.0001 relative" in result.output


def leaves(model) -> list:
    """The weighted layers in call order, nested Sequential models (ConvNeXt's stem and
    downsampling blocks) opened."""
    out = []
    for layer in model.layers:
        out += leaves(layer) if hasattr(layer, "layers") else [layer] if layer.weights else []
    return out


# (spec, params, keras.applications constructor, input size for the comparison)
FAMILIES = [
    ("densenet", {}, "DenseNet121", 64),
    ("convnext", {}, "ConvNeXtTiny", 32),
    ("mobilenet_v3", {}, "MobileNetV3Small", 64),
    ("mobilenet_v3", {"large": True}, "MobileNetV3Large", 64),
]


@pytest.mark.parametrize("spec, params, reference, size", FAMILIES, ids=[f[2] for f in FAMILIES])
def test_same_model_as_keras_applications(spec, params, reference, size, tmp_path):
    """As the Xception test in test_keras_backend.py: the counts agree at full size; at
    a small input, pair the weighted layers in call order, copy the reference's weights
    (all but kernels randomised first: BN statistics, scales, offsets, biases) and compare
    outputs."""
    keras = pytest.importorskip("keras")
    import numpy as np

    from archc.codegen.backend import get

    backend = get("keras")
    constructor = getattr(keras.applications, reference)
    full = load(ROOT / f"examples/{spec}.yaml", params)
    assert backend.count(constructor(weights=None, classifier_activation=None)) == (full.total.trainable, full.total.non_trainable)
    a = load(ROOT / f"examples/{spec}.yaml", params, input_size=(size, size))
    ours = build_model(backend, a, tmp_path)
    ref = constructor(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    for theirs, mine in zip(leaves(ref), leaves(ours), strict=True):
        assert type(theirs).__name__ == type(mine).__name__, (theirs.name, mine.name)  # LayerScale: each module's own class
        values = [np.asarray(w) if w.name.endswith("kernel") else rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in theirs.weights]
        theirs.set_weights(values)
        mine.set_weights(values)
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = np.asarray(ref(x, training=False))
    found = np.asarray(ours(x, training=False))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_schema_accepts_the_new_ops_and_refuses_a_bad_padding(new_ops):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    from archc.ir.schema import spec_schema

    validator = jsonschema.Draft202012Validator(spec_schema())
    spec = yaml.safe_load(new_ops.read_text())
    assert not list(validator.iter_errors(spec))
    spec["flows"]["pre"][3] = {"zero_pad": {"padding": [1, 2, 3]}}
    assert list(validator.iter_errors(spec))


def test_generated_code_for_the_new_ops_is_formatted_and_lint_clean(new_ops, tmp_path):
    """As for the bundled specs: ruff format leaves the files alone (at this repo's width and
    at ruff's default), and ruff check finds nothing, in both backends."""
    import shutil
    import subprocess

    from archc.api import build

    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed")
    specs = [new_ops, *(ROOT / f"examples/{f}.yaml" for f in ("densenet", "convnext", "mobilenet_v3", "mobilenet_v2"))]
    files = [str(p) for spec in specs for p in build(spec, ["torch", "keras"], tmp_path)]
    torch_files = [f for f in files if f.endswith("_torch.py")]
    for args, paths in (
        (["format", "--check"], files),
        (["format", "--check", "--isolated"], torch_files),
        (["check", "--no-cache"], files),
        (["check", "--no-cache", "--isolated", "--select", "E,F,W,I,B,UP"], torch_files),
    ):
        result = subprocess.run([exe, *args, *paths], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_repeated_body_may_set_the_channels(tmp_path):
    """A repeat of convs that changes the channels in its first run only: the IR counts each
    run with its own input, torch builds run 0 for the input's channels, and both backends
    agree."""
    spec = tmp_path / "stage.yaml"
    spec.write_text(
        "name: stage\ninput: [12, 12, 3]\nflows:\n  main:\n"
        "    - repeat: {times: 3, body: [conv: {filters: 8, kernel: 3, padding: same}, bn, act: relu]}\n"
        "    - global_avg_pool\n    - dense: 2\n"
    )
    a = load(spec)
    assert a.counts["main/repeat1"].trainable == (27 * 8 + 8 + 16) + 2 * (72 * 8 + 8 + 16)
    result = run("verify", spec)
    assert result.exit_code == 0, result.output


# -- upsample (the worked example of docs/adding-an-op.md) ---------------------------------------

UPSAMPLE = """\
name: upsampling
input: [5, 7, 3]
flows:
  body:
    - conv: {filters: 4, kernel: 3, padding: same}
    - upsample: 2
    - act: relu
    - upsample: {factor: 3, mode: bilinear}
    - bn
    - conv: {filters: 2, kernel: 1}
"""


@pytest.fixture(scope="module")
def upsample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upsample") / "upsample.yaml"
    path.write_text(UPSAMPLE)
    return path


def test_upsample_shapes_and_counts(upsample):
    a = load(upsample)
    assert a.shapes["body/upsample1"] == ((5, 7, 4), (10, 14, 4))
    assert a.shapes["body/upsample2"] == ((10, 14, 4), (30, 42, 4))
    assert a.counts["body/upsample1"].total == a.counts["body/upsample2"].total == 0
    assert a.counts["body/upsample2"].macs == 0
    assert a.total.macs == 5 * 7 * 4 * 9 * 3 + 30 * 42 * 2 * 4  # the two convs only
    assert a.output == (30, 42, 2)


def builds_in_both_backends_and_verifies(spec, tmp_path, output: tuple[int, ...]) -> None:
    """Both backends' counts are the IR's, torch's flops are twice its MACs (one
    multiply-add is two flops; the op itself counts none) and ``archc verify`` passes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from archc.codegen.backend import get

    a = load(spec)
    for name in ("torch", "keras"):
        backend = get(name)
        assert backend.count(build_model(backend, a, tmp_path)) == (a.total.trainable, a.total.non_trainable), name
    model = build_model(get("torch"), a, tmp_path).eval()
    h, w, c = a.net.input
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(torch.randn(1, c, h, w))
    assert tuple(y.shape) == (1, *output)
    assert counter.get_total_flops() == 2 * a.total.macs
    result = run("verify", spec)
    assert result.exit_code == 0, result.output
    assert "ok: counts agree and outputs agree within 0.0001 relative" in result.output


def test_upsample_builds_in_both_backends_and_verifies(upsample, tmp_path):
    builds_in_both_backends_and_verifies(upsample, tmp_path, (2, 30, 42))  # bilinear: align_corners=False is Keras's


SPLIT = """\
name: splitting
input: [5, 7, 3]
flows:
  body:
    - conv: {filters: 12, kernel: 1}
    - split: {parts: 2, as: [a, b]}
    - conv: {filters: 6, kernel: 3, padding: same, from: b, as: c}
    - split: {sizes: [2, 4], as: [d, e]}
    - act: {kind: relu, from: e, as: f}
    - concat: [a, c, d, f]
    - conv: {filters: 2, kernel: 1}
"""


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.yaml"
    path.write_text(SPLIT)
    return path


def test_split_shapes_and_counts(split):
    a = load(split)
    assert a.shapes["body/split1"] == ((5, 7, 12), (5, 7, 6))  # the first part runs on
    assert a.shapes["body/split2"] == ((5, 7, 6), (5, 7, 2))
    assert a.shapes["body/concat1"][1] == (5, 7, 6 + 6 + 2 + 4)
    assert a.counts["body/split1"].total == a.counts["body/split1"].macs == 0
    assert a.total.macs == 5 * 7 * (3 * 12 + 6 * 9 * 6 + 18 * 2)  # the three convs only


@pytest.mark.parametrize(
    "fields, message",
    [
        ("{parts: 5, as: [a, b, c, d, e]}", "expected parts that divide the 12 channels, found 5"),
        ("{sizes: [4, 4], as: [a, b]}", "expected sizes that add up to the 12 channels, found [4, 4] (8)"),
        ("{parts: 2, sizes: [6, 6], as: [a, b]}", "expected 'parts' or 'sizes', found both"),
        ("{parts: 3, as: [a, b]}", "expected as: with a name for each of the 3 parts, found 2"),
    ],
)
def test_a_bad_split_is_one_located_line(fields, message, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\ninput: [4, 4, 3]\nflows:\n  main:\n    - conv: {{filters: 12, kernel: 1}}\n    - split: {fields}\n")
    with pytest.raises(SpecError) as info:
        load(spec)
    assert str(info.value) == f"{spec}:6:7: flows.main[1].split: {message}"


def test_split_builds_in_both_backends_and_verifies(split, tmp_path):
    builds_in_both_backends_and_verifies(split, tmp_path, (2, 5, 7))
