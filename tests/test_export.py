"""Deploy and reuse: the batch norm fold (decided from the IR), the generated modules'
``fold_batchnorm``, ``archc export`` (ONNX for every bundled spec, TorchScript, .keras)
and ``archc import`` of keras.applications weights (Xception, InceptionV3).

Models run at small input sizes; BN statistics are random (archc's random_weights, or
randomised in the keras.applications reference), so that a fold that dropped a mean,
a variance, a gamma or a beta changes the outputs.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bundled import buildable
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.passes.fold import batch_norms, folded_instances, folds, swapped_instances, swaps
from archc.tools.export import generated_module
from archc.tools.verify import output_difference, porting_backends, random_weights

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).parents[1]
BUNDLED = buildable(sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("examples/*.yaml")]))
SMALL = (75, 75)  # fits every bundled spec (Xception needs 71, Inception V3 75)

# Every kind of pair and every boundary that breaks one: conv with and without bias,
# grouped, before a BN without scale or center; separable convs (segments, depthwise
# with depth multiplier 2) in and out of a block; a block whose conv and BN share a
# `when` (on in proj1, off in proj2); a repeat; a branch; depthwise convs (multiplier 2,
# stride 2 with a bias); dense -> BN. No pair: a BN after
# an activation, after a residual, after branches, after a conv with a `when` of its own.
FOLDS = """\
name: folds
input: [23, 22, 3]
params:
  segments: {default: 2, type: segments}
  extra: true
blocks:
  sep:
    args: [filters]
    body:
      - sepconv: {filters: $filters, kernel: 3, padding: same, segments: $segments, bias: false}
      - bn: {scale: false}
  proj:
    args: [project]
    body:
      - conv: {filters: 8, kernel: 1, when: $project}
      - bn: {when: $project}
flows:
  stem:
    - conv: {filters: 8, kernel: 2, padding: same}
    - bn
    - conv: {filters: 8, kernel: 3, stride: 2, padding: same, groups: 2, bias: false}
    - bn: {center: false}
    - act: relu
    - conv: {filters: 8, kernel: 1}
    - act: relu
    - bn
  body:
    - residual:
        body:
          - sep: {filters: 8}
          - sepconv: {filters: 8, kernel: [1, 3], padding: same, depth_multiplier: 2}
          - bn: {center: false, scale: false}
          - conv: {filters: 8, kernel: 1}
    - bn
    - proj: {project: true}
    - proj: {project: false}
    - repeat: {times: 2, body: [conv: {filters: 8, kernel: 1, bias: false}, bn]}
    - branches:
        a: [conv: {filters: 4, kernel: 1}]
        b: [conv: {filters: 4, kernel: 1}, bn]
    - bn
    - conv: {filters: 8, kernel: 1, when: $extra}
    - bn
    - depthwise: {kernel: 3, padding: same, depth_multiplier: 2, bias: false}
    - bn
    - depthwise: {kernel: 3, stride: 2, padding: same}
    - bn: {scale: false}
  head:
    - global_avg_pool
    - dense: {units: 10}
    - bn: {center: false}
    - dense: 5
"""


@pytest.fixture(scope="module")
def folds_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("folds") / "folds.yaml"
    path.write_text(FOLDS)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def small(spec: Path, **params):
    """The spec at a small input size, with 10 classes where it has the param."""
    decls = load(spec).net.params
    return load(spec, {"classes": 10, **params} if "classes" in decls else params, SMALL)


# -- the fold pass (no framework) -----------------------------------------------------------


def test_fold_pairs_are_decided_from_the_ir(folds_spec):
    analysis = load(folds_spec)
    assert [(f.producer, f.bn, f.op) for f in folds(analysis)] == [
        ("stem/conv1", "stem/bn1", "conv"),
        ("stem/conv2", "stem/bn2", "conv"),
        ("body/residual1/body/sep1/sepconv1", "body/residual1/body/sep1/bn1", "sepconv"),
        ("body/residual1/body/sepconv1", "body/residual1/body/bn1", "sepconv"),
        ("body/proj1/conv1", "body/proj1/bn1", "conv"),
        ("body/proj2/conv1", "body/proj2/bn1", "conv"),
        ("body/repeat1/conv1", "body/repeat1/bn1", "conv"),
        ("body/branches1/b/conv1", "body/branches1/b/bn1", "conv"),
        ("body/depthwise1", "body/bn4", "depthwise"),
        ("body/depthwise2", "body/bn5", "depthwise"),
        ("head/dense1", "head/bn1", "dense"),
    ]
    # proj2 is switched off and the repeat runs twice: 11 of the 15 batch norms that run
    assert (folded_instances(analysis), batch_norms(analysis)) == (11, 15)
    assert folded_instances(load(folds_spec, {"extra": False})) == 11


def test_a_table_entry_expands_to_every_repeat_index():
    # the function every generated module carries (codegen.helper_source) to apply its tables
    from archc.passes.fold import _expand

    # 11 outer runs (index 10 too), 2 inner ones each, 3 in the fourth; other names are not it
    names = {f"r.{i}.s.{j}.bn" for i in range(11) for j in range(2)} | {"r.3.s.2.bn", "r.3.t.0.bn", "top.bn", "r.0.s"}
    found = _expand("r.{0}.s.{1}.bn", names)
    assert len(found) == 11 * 2 + 1 and {("r.10.s.1.bn", (10, 1)), ("r.3.s.2.bn", (3, 2))} <= set(found)
    assert _expand("top.bn", names) == [("top.bn", ())] and _expand("gone.bn", names) == []


@pytest.mark.parametrize(
    "spec, folded, total",
    [
        ("specs/xception.yaml", 40, 40),
        ("specs/inception_v3_slim.yaml", 94, 94),
        ("specs/inception_v3.yaml", 0, 94),  # conv -> relu -> bn (the 2016 file): nothing to fold into
        ("examples/resnet50.yaml", 53, 53),
        ("examples/mobilenet_v1.yaml", 27, 27),
        ("examples/mobilenet_v2.yaml", 52, 52),  # depthwise -> bn pairs too
        ("examples/mobilenet_v3.yaml", 34, 34),
        ("examples/efficientnet.yaml", 49, 49),
        ("examples/densenet.yaml", 59, 121),  # bn -> relu -> conv: the bn before a conv stays
    ],
)
def test_batch_norms_folded_in_the_bundled_specs(spec, folded, total):
    analysis = load(ROOT / spec)
    assert (folded_instances(analysis), batch_norms(analysis)) == (folded, total)


# Average pools that run after the 1x1 conv that follows them: right before a conv, before
# a block that opens with one, inside a repeat. Not swapped: a pool of stride 2, a conv
# with more filters than channels, a 3x3 conv, an activation between, a conv under a
# `when` of its own (in the block or in the flow).
SWAPS = """\
name: swaps
input: [12, 11, 16]
params:
  extra: true
blocks:
  unit:
    args: [filters]
    body:
      - conv: {filters: $filters, kernel: 1}
      - bn
      - act: relu
  maybe:
    body:
      - conv: {filters: 8, kernel: 1, when: $extra}
      - bn
flows:
  body:
    - avgpool: {pool: 3, stride: 1, padding: same}
    - conv: {filters: 8, kernel: 1, padding: same}
    - conv: {filters: 16, kernel: 1}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - unit: {filters: 8}
    - repeat:
        times: 2
        body: [avgpool: {pool: [3, 1], stride: 1, padding: same}, conv: {filters: 4, kernel: 1}, conv: {filters: 8, kernel: 1}]
    - avgpool: {pool: 2, stride: 2, padding: same}
    - conv: {filters: 8, kernel: 1}
    - conv: {filters: 16, kernel: 1}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - conv: {filters: 32, kernel: 1}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - conv: {filters: 8, kernel: 3, padding: same}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - act: relu
    - conv: {filters: 4, kernel: 1}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - conv: {filters: 2, kernel: 1, when: $extra}
    - avgpool: {pool: 3, stride: 1, padding: same}
    - maybe
    - global_avg_pool
"""


@pytest.fixture(scope="module")
def swaps_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("swaps") / "swaps.yaml"
    path.write_text(SWAPS)
    return path


def test_pool_swaps_are_decided_from_the_ir(swaps_spec):
    analysis = load(swaps_spec)
    assert [(s.pool, s.conv) for s in swaps(analysis)] == [
        ("body/avgpool1", "body/conv1"),
        ("body/avgpool2", "body/unit1/conv1"),
        ("body/repeat1/avgpool1", "body/repeat1/conv1"),
    ]
    assert swapped_instances(analysis) == 4  # the repeat's pool twice


@pytest.mark.parametrize("spec, swapped", [("specs/inception_v3_slim.yaml", 9), ("specs/inception_v3.yaml", 9), ("specs/xception.yaml", 0)])
def test_pool_swaps_in_the_bundled_specs(spec, swapped):
    # Inception's pool branches: 3 + 4 + 2 modules; the 2016 mixed8's stride-2 pool stays
    assert swapped_instances(load(ROOT / spec)) == swapped


# -- fold_batchnorm in the generated modules -------------------------------------------------


def _torch_model(analysis, folder, seed=0):
    torch_backend = porting_backends(["torch"])[0]["torch"]
    module = generated_module(torch_backend, analysis, folder)
    model = module.create_model()
    torch_backend.load_weights(model, analysis, random_weights(analysis, seed))
    return module, model.eval()


def _built(spec: Path, folder):
    """The spec's analysis (a bundled spec made small), its generated torch module, the
    model with random weights, and an input batch of 2."""
    import torch

    analysis = small(spec) if spec in BUNDLED else load(spec)
    module, model = _torch_model(analysis, folder)
    h, w, c = analysis.net.input
    return analysis, module, model, torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))


def as_numpy(out):
    """A torch model's output as numpy; several outputs as a dict by name."""
    return {name: as_numpy(value) for name, value in out.items()} if isinstance(out, dict) else out.numpy()


def _batch_norms(model) -> int:
    import torch

    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("spec", [None, *BUNDLED], ids=lambda s: "folds" if s is None else s.stem)
def test_the_folded_torch_model_gives_the_same_outputs(spec, folds_spec, tmp_path):
    import torch

    analysis, module, model, x = _built(spec or folds_spec, tmp_path)
    with torch.no_grad():
        before = as_numpy(model(x))
        folded = module.fold_batchnorm(copy.deepcopy(model))
        after = as_numpy(folded(x))
    assert _batch_norms(model) - _batch_norms(folded) == folded_instances(analysis)
    assert output_difference(before, after).rel < 1e-5
    if not folded_instances(analysis):
        return
    # the fold changes outputs by rounding only: a BN dropped without folding would not
    dropped = copy.deepcopy(model)
    for name, m in list(dropped.named_modules()):
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            parent, _, attr = name.rpartition(".")
            setattr(dropped.get_submodule(parent), attr, torch.nn.Identity())
    with torch.no_grad():
        assert output_difference(before, as_numpy(dropped(x))).rel > 1e-2


def _built_in_keras(spec: Path, folder):
    """As ``_built``, in Keras: the analysis, the generated module, the model with random
    weights, and an input batch of 2 (NHWC)."""
    analysis = small(spec) if spec in BUNDLED else load(spec)
    backend = porting_backends(["keras"])[0]["keras"]
    module = generated_module(backend, analysis, folder)
    model = module.create_model()
    backend.load_weights(model, analysis, random_weights(analysis, 0))
    return analysis, module, model, np.random.default_rng(1).standard_normal((2, *analysis.net.input)).astype(np.float32)


def test_the_folded_keras_model_gives_the_same_outputs(folds_spec, tmp_path):
    import keras

    analysis, module, model, x = _built_in_keras(folds_spec, tmp_path)
    folded = module.fold_batchnorm(model)
    count = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert count == batch_norms(analysis) - folded_instances(analysis)
    assert output_difference(model.predict(x, verbose=0), folded.predict(x, verbose=0)).rel < 1e-5


@pytest.mark.parametrize("spec", [None, ROOT / "specs/inception_v3_slim.yaml"], ids=["swaps", "inception_v3_slim"])
def test_the_keras_inference_model_gives_the_same_outputs(spec, swaps_spec, tmp_path):
    analysis, module, model, x = _built_in_keras(spec or swaps_spec, tmp_path)
    fast = module.for_inference(model)
    assert output_difference(model.predict(x, verbose=0), fast.predict(x, verbose=0)).rel < 1e-5
    # each pool now averages its conv's output: the conv's fewer channels
    names = {layer.name for layer in model.layers}
    pairs = [(pool, conv.format(*i)) for template, conv in module.POOL_SWAPS for pool, i in module._expand(template, names)]
    assert len(pairs) == swapped_instances(analysis) > 0
    for pool, conv in pairs:
        assert model.get_layer(pool).input.shape[-1] > fast.get_layer(conv).filters == fast.get_layer(pool).input.shape[-1]


# -- archc export ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", BUNDLED, ids=lambda s: s.stem)
def test_onnx_export_runs_in_onnxruntime_like_torch(spec, tmp_path):
    from archc.tools.export import export

    out = tmp_path / f"{spec.stem}.onnx"
    result = export(small(spec), "onnx", out)
    assert out.is_file()
    checks = dict(result.checks)
    assert set(checks) == {
        "folded vs unfolded torch model",
        "ONNX in onnxruntime vs torch",
        "ONNX in onnxruntime vs unfolded torch model",
    }
    assert all(rel <= 1e-4 for rel in checks.values()), checks
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary or external-data file left


def test_export_cli_torchscript_and_keras_load_and_match(folds_spec, tmp_path):
    import keras
    import torch

    analysis = load(folds_spec)
    _, model = _torch_model(analysis, tmp_path, seed=3)
    checkpoint = tmp_path / "w.pt"
    torch.save(model.state_dict(), checkpoint)
    x = np.random.default_rng(2).standard_normal((3, *analysis.net.input)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()

    result = run("export", folds_spec, "--format", "torchscript", "--weights", checkpoint, "-o", tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert "batch norms folded: 11 of 15" in result.output
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert sum("BatchNorm" in m.original_name for m in loaded.modules()) == 13 - 9
    with torch.no_grad():
        assert output_difference(expected, loaded(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()).rel < 1e-5

    # torch weights into the Keras export: ported through the neutral format
    result = run("export", folds_spec, "--format", "keras", "--weights", checkpoint, "-o", tmp_path / "m.keras")
    assert result.exit_code == 0, result.output
    assert "(torch -> keras)" in result.output
    keras_model = keras.saving.load_model(tmp_path / "m.keras")
    assert output_difference(expected, keras_model.predict(x, verbose=0)).rel < 1e-4


def test_no_fold_keeps_the_batch_norms(folds_spec, tmp_path):
    result = run("export", folds_spec, "--format", "torchscript", "--no-fold", "-o", tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert "batch norms folded: 0 of 15" in result.output
    assert "folded vs unfolded" not in result.output


def test_a_failed_export_check_writes_nothing(folds_spec, tmp_path):
    result = run("export", folds_spec, "--format", "torchscript", "--tolerance", "1e-12", "-o", tmp_path / "m.pt")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: export check failed: folded vs unfolded torch model: relative difference")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_wrong_file_name(folds_spec, tmp_path):
    result = run("export", folds_spec, "--format", "keras", "-o", tmp_path / "m.h5")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: expected an output file name ending in .keras for keras, found '{tmp_path / 'm.h5'}'"


def test_keras_export_at_another_size_of_a_spec_whose_params_set_the_input(tmp_path):
    # --image-size replaces the params' expressions for the input: the Keras model (whose
    # input size is part of it) is built at 12x12, not at the param's 16x16
    import keras

    spec = tmp_path / "sized.yaml"
    spec.write_text("name: sized\ninput: [$size, $size, 3]\nparams:\n  size: 16\nflows:\n  body: [conv: {filters: 4, kernel: 3}, bn]\n")
    result = run("export", spec, "--image-size", "12", "--format", "keras", "-o", tmp_path / "m.keras")
    assert result.exit_code == 0, result.output
    assert keras.saving.load_model(tmp_path / "m.keras").input_shape == (None, 12, 12, 3)


# -- archc import from keras.applications ----------------------------------------------------


REFERENCES = {
    "xception": ("Xception", ROOT / "specs/xception.yaml", (71, 71)),
    "inception_v3": ("InceptionV3", ROOT / "specs/inception_v3_slim.yaml", (75, 75)),
}


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def reference(request):
    """A keras.applications model (weights=None, random BN statistics), its outputs on a
    random input, and its weights saved as .h5 (the shipped layout) and .weights.h5."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    cls, spec, size = REFERENCES[request.param]
    model = getattr(keras.applications, cls)(weights=None, input_shape=(*size, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                low, high = (0.5, 1.5) if w.name in ("gamma", "moving_variance") else (-0.5, 0.5)
                values.append(rng.uniform(low, high, tuple(w.shape)).astype(np.float32))
            layer.set_weights(values)
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    folder = Path(tempfile.mkdtemp(prefix="archc-test-import-"))
    model.save_weights(folder / "ref.weights.h5")
    import h5py

    with h5py.File(folder / "ref.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return spec, size, x, model.predict(x, verbose=0), folder


@pytest.mark.parametrize("layout", ["ref.h5", "ref.weights.h5"])
def test_import_keras_applications_weights(reference, layout, tmp_path):
    import torch

    spec, size, x, expected, folder = reference
    analysis = load(spec, None, size)
    keras_out = tmp_path / "imported.weights.h5"
    result = run("import", spec, "--from", "keras.applications", folder / layout, "--to", "keras", "-o", keras_out)
    assert result.exit_code == 0, result.output
    backends = porting_backends(["keras", "torch"])[0]
    keras_model = generated_module(backends["keras"], analysis, tmp_path).create_model()
    keras_model.load_weights(keras_out)
    assert output_difference(expected, keras_model.predict(x, verbose=0)).rel <= 1e-5

    torch_out = tmp_path / "imported.pt"
    result = run("import", spec, "--from", "keras.applications", folder / layout, "--to", "torch", "-o", torch_out)
    assert result.exit_code == 0, result.output
    torch_model = generated_module(backends["torch"], analysis, tmp_path).create_model().eval()
    torch_model.load_state_dict(torch.load(torch_out, weights_only=True))
    with torch.no_grad():
        out = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert output_difference(expected, out).rel <= 1e-4


def test_import_names_the_first_layer_that_does_not_fit(reference, tmp_path):
    spec, _, _, _, folder = reference
    wrong = ["-p", "middle_repeats=4"] if spec.stem == "xception" else ["-p", "classes=10"]
    for layout in ("ref.h5", "ref.weights.h5"):
        result = run("import", spec, *wrong, "--from", "keras.applications", folder / layout, "--to", "torch", "-o", tmp_path / "w.pt")
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "the architectures differ" in lines[0], result.output
        first = "exit_down1_residual1_body_sep_bn2_sepconv1" if spec.stem == "xception" else "head_classifier"
        assert f"'{first}'" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spec", [None, *BUNDLED], ids=lambda s: "swaps" if s is None else s.stem)
def test_the_inference_torch_model_gives_the_same_outputs(spec, swaps_spec, tmp_path):
    import torch

    analysis, module, model, x = _built(spec or swaps_spec, tmp_path)
    fast = module.for_inference(copy.deepcopy(model))
    with torch.no_grad():
        before, after = as_numpy(model(x)), as_numpy(fast(x))
    assert output_difference(before, after).rel < 1e-5
    assert _batch_norms(model) - _batch_norms(fast) == folded_instances(analysis)
    # each pool and its conv changed places; with NCHW input, every conv computes in channels_last
    moved = [(name, m) for name, m in fast.named_modules() if isinstance(m, torch.nn.AvgPool2d) and name.endswith("conv1")]
    assert len(moved) == swapped_instances(analysis)
    layouts = []
    for m in fast.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, y: layouts.append(y.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        fast(x)
    assert layouts and all(layouts)


def test_a_swap_moves_the_pool_after_the_conv(swaps_spec, tmp_path):
    import torch

    analysis = load(swaps_spec)
    module, model = _torch_model(analysis, tmp_path)
    swapped = module.swap_pools(copy.deepcopy(model))
    assert isinstance(swapped.body.avgpool1, torch.nn.Conv2d) and isinstance(swapped.body.conv1, torch.nn.AvgPool2d)
    assert isinstance(swapped.body.unit1.conv1, torch.nn.AvgPool2d)
    again = module.swap_pools(module.swap_pools(copy.deepcopy(model)))  # once only: the second call keeps them
    assert [type(m) for m in again.modules()] == [type(m) for m in swapped.modules()]
    x = torch.randn(2, 16, 12, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert output_difference(model(x).numpy(), swapped(x).numpy()).rel < 1e-5
        # a pool that counted padded cells would not commute with the conv's bias: the border differs
        pool = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        conv = swapped.body.avgpool1
        assert output_difference(conv(pool(x)).numpy(), pool(conv(x)).numpy()).rel > 1e-3


# A swap archc lists at the default params (k=1), which k=3 makes inexact: a 3x3 average
# pool and a 3x3 conv do not commute at the borders (issue 24, defect 1).
PARAM_CHANGES_A_SWAP = """\
name: swap
input: [8, 8, 4]
params: {k: 1}
flows:
  main:
    - avgpool: {pool: 3, stride: 1, padding: same}
    - conv: {filters: 2, kernel: $k, padding: same}
"""


@pytest.mark.parametrize("k", [1, 3])
def test_for_inference_holds_when_a_param_changes_a_swapped_layer(k, tmp_path):
    import torch

    spec = tmp_path / "swap.yaml"
    spec.write_text(PARAM_CHANGES_A_SWAP)
    analysis = load(spec)
    assert [(s.pool, s.conv) for s in swaps(analysis)] == [("main/avgpool1", "main/conv1")]
    backends = porting_backends(["torch", "keras"])[0]
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype(np.float32)

    module = generated_module(backends["torch"], analysis, tmp_path)
    torch.manual_seed(0)
    model = module.create_model(k=k).eval()
    fast = module.for_inference(copy.deepcopy(model))
    with torch.no_grad():
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
        assert output_difference(model(nchw).numpy(), fast(nchw).numpy()).rel < 1e-5
    assert isinstance(fast.main.conv1, torch.nn.AvgPool2d) == (k == 1)  # swapped only where exact

    keras_module = generated_module(backends["keras"], analysis, tmp_path)
    keras_model = keras_module.create_model(k=k)
    keras_fast = keras_module.for_inference(keras_model)
    assert output_difference(keras_model.predict(x, verbose=0), keras_fast.predict(x, verbose=0)).rel < 1e-5


# One of two pools, picked by a param, before the same 1x1 conv (Inception's pool branches
# with torch_layout): the pool under its own `when` swaps with the conv that is always
# there; with the param off that pool is not in the model, and the pair is left alone.
PARAM_PICKS_THE_POOL = """\
name: picked
input: [8, 8, 6]
params: {same: true}
flows:
  main:
    - zero_pad: {padding: 1, when: "${not same}"}
    - avgpool: {pool: 3, stride: 1, name: valid_pool, when: "${not same}"}
    - avgpool: {pool: 3, stride: 1, padding: same, when: $same}
    - conv: {filters: 2, kernel: 1}
"""


@pytest.mark.parametrize("same", [True, False])
def test_a_pool_switched_by_a_param_swaps_with_the_conv_after_it(same, tmp_path):
    import torch

    spec = tmp_path / "picked.yaml"
    spec.write_text(PARAM_PICKS_THE_POOL)
    analysis = load(spec, {"same": same})
    assert [(s.pool, s.conv) for s in swaps(analysis)] == [("main/avgpool2", "main/conv1")]
    assert swapped_instances(analysis) == int(same)
    backends = porting_backends(["torch", "keras"])[0]
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 6)).astype(np.float32)

    module = generated_module(backends["torch"], analysis, tmp_path)
    torch.manual_seed(0)
    model = module.create_model().eval()
    fast = module.for_inference(copy.deepcopy(model))
    with torch.no_grad():
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
        assert output_difference(model(nchw).numpy(), fast(nchw).numpy()).rel < 1e-5
    assert isinstance(fast.main.conv1, torch.nn.AvgPool2d) == same

    keras_module = generated_module(backends["keras"], analysis, tmp_path)
    keras_model = keras_module.create_model()
    keras_fast = keras_module.for_inference(keras_model)
    assert output_difference(keras_model.predict(x, verbose=0), keras_fast.predict(x, verbose=0)).rel < 1e-5
