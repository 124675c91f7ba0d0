"""Cross-backend verification and checkpoint conversion: ``archc verify`` passes for the
bundled specs at full size (and the xception variants), catches a backend broken in one
detail and names the module, catches count mismatches and wrong weight layouts; and
``archc convert`` round-trips checkpoints bit for bit.

Full-size forward passes run at batch 1; torch and TensorFlow are imported once per
worker (module-level), every model is built fresh by the code under test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from bundled import buildable
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.passes.analysis import Counts
from archc.passes.instances import counts, instances, modules, roles, weighted

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).parents[1]
XCEPTION = ROOT / "specs/xception.yaml"

# Every weighted op and layout the mapping knows: an even kernel ('same' padded
# asymmetrically), a grouped strided conv (padded by input size), BN with gamma only,
# beta only, neither (a BatchNorm1d after a dense layer), a depthwise sepconv with depth
# multiplier 2 and a 1x3 kernel, sepconvs whose segments and activation between are
# params, a residual a param can drop, branches, nested repeats, flatten -> dense.
EVERY_OP = """\
name: every_op
input: [23, 22, 3]
params:
  residual: true
  segments: {default: depthwise, type: segments}
  between: {default: none, choices: [none, relu, elu]}
  hidden: true
blocks:
  sep:
    args: [filters]
    body:
      - sepconv: {filters: $filters, kernel: 3, padding: same, segments: $segments, between: $between, bias: false}
      - bn: {scale: false}
flows:
  stem:
    - conv: {filters: 8, kernel: 2, padding: same}
    - conv: {filters: 8, kernel: 3, stride: 2, padding: same, groups: 2, bias: false}
    - bn: {center: false}
    - act: relu
    - avgpool: {pool: 3, stride: 2, padding: same}
  body:
    - residual:
        use_shortcut: $residual
        body:
          - sep: {filters: 16}
          - act: elu
          - sepconv: {filters: 16, kernel: [1, 3], padding: same, depth_multiplier: 2}
          - maxpool: {pool: 3, stride: 2, padding: same}
        shortcut:
          - conv: {filters: 16, kernel: 1, stride: 2, padding: same}
          - bn
    - repeat:
        times: 2
        body:
          - repeat: {times: 2, body: [sep: {filters: 16}, act: relu]}
          - branches:
              a: [conv: {filters: 4, kernel: 1}]
              b: [maxpool: {pool: 3, stride: 1, padding: same}, conv: {filters: 12, kernel: 1, bias: false}]
  head:
    - flatten
    - dense: {units: 10, when: $hidden}
    - bn: {center: false, scale: false}
    - dropout: 0.3
    - dense: 5
"""


@pytest.fixture(scope="module")
def every_op(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("every_op") / "every_op.yaml"
    path.write_text(EVERY_OP)
    return path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- instances and the neutral format (no framework) --------------------------------------


def test_instance_keys_unroll_repeats(every_op):
    keys = [i.key for i in weighted(load(every_op))]
    assert "body/repeat1[1]/repeat1[0]/sep1/sepconv1" in keys
    assert len([k for k in keys if k.endswith("/sep1/sepconv1") and k.startswith("body/repeat1[")]) == 4
    xception = [i.key for i in weighted(load(XCEPTION))]
    assert "middle/repeat[3]/middle1/residual1/body/sep_bn1/sepconv1" in xception
    assert "entry/down1/residual1/body/sep_bn1/sepconv1" in xception
    assert len(xception) == len(set(xception))


def test_instances_are_in_execution_order(every_op):
    keys = [i.key for i in instances(load(every_op))]
    residual = keys.index("body/residual1")
    assert keys.index("body/residual1/body/maxpool1") < keys.index("body/residual1/shortcut/conv1") < residual
    assert keys.index("body/repeat1[0]/branches1") < keys.index("body/repeat1[1]/repeat1[0]/sep1/sepconv1")


@pytest.mark.parametrize(
    "spec", buildable(sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))), ids=lambda p: p.stem
)
def test_instance_counts_add_up_to_the_analysis(spec):
    analysis = load(spec)
    total = sum((counts(i) for i in weighted(analysis)), Counts())
    assert (total.trainable, total.non_trainable) == (analysis.total.trainable, analysis.total.non_trainable)
    assert modules(analysis) == [f"{r.flow}/{r.name}" for r in analysis.rows]


def test_roles_are_the_ir_layout(every_op):
    by_key = {i.key: i for i in weighted(load(every_op, {"segments": 2}))}
    assert roles(by_key["stem/conv2"]) == {"kernel": (3, 3, 4, 8)}
    assert roles(by_key["stem/bn1"]) == {"gamma": (8,), "moving_mean": (8,), "moving_variance": (8,)}
    assert roles(by_key["body/residual1/body/sepconv1"]) == {"spatial": (1, 3, 16, 2), "pointwise": (1, 1, 32, 16), "bias": (16,)}
    assert roles(by_key["body/residual1/body/sep1/sepconv1"])["spatial"] == (3, 3, 4, 8)  # grouped: (kh, kw, C/s, C*dm)
    assert roles(by_key["head/dense1"]) == {"kernel": (144, 10), "bias": (10,)}
    assert roles(by_key["head/bn1"]) == {"moving_mean": (10,), "moving_variance": (10,)}


def test_random_weights_fit_the_roles(every_op):
    np = pytest.importorskip("numpy")
    from archc.tools.verify import random_weights

    analysis = load(every_op)
    weights = random_weights(analysis, seed=3)
    assert list(weights) == [i.key for i in weighted(analysis)]
    for inst in weighted(analysis):
        assert {r: a.shape for r, a in weights[inst.key].items()} == roles(inst)
        assert all(a.dtype == np.float32 for a in weights[inst.key].values())
    again = random_weights(analysis, seed=3)
    assert all(np.array_equal(weights[k][r], again[k][r]) for k in weights for r in weights[k])


# -- verify on the real backends -------------------------------------------------------------

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from archc.backends.keras_backend import KerasBackend  # noqa: E402
from archc.backends.torch_backend import TorchBackend  # noqa: E402
from archc.backends.torch_backend import weights as torch_weights  # noqa: E402


def relative_differences(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"largest relative difference (\S+?)[ ,]", output.replace("\n", " "))]


@pytest.mark.parametrize(
    "spec, params",
    [
        ("xception", []),
        ("inception_v3", []),
        ("inception_v3_slim", []),
        ("xception", ["segments=4"]),
        ("xception", ["between=relu"]),
        ("xception", ["between=elu"]),
    ],
    ids=["xception", "inception_v3", "inception_v3_slim", "xception-segments=4", "xception-between=relu", "xception-between=elu"],
)
def test_verify_passes_for_the_bundled_specs_at_full_size(spec, params):
    args = [a for p in params for a in ("-p", p)]
    result = run("verify", ROOT / f"specs/{spec}.yaml", *args, "--batch", "1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ok: counts agree and outputs agree within 0.0001 relative" in out
    analysis = load(ROOT / f"specs/{spec}.yaml", dict(p.split("=") for p in params))
    for path in modules(analysis):
        assert path in out
    total = f"{analysis.total.trainable:,} + {analysis.total.non_trainable:,}"
    assert out.count(total) == 3  # the IR, keras, torch
    diffs = relative_differences(out)
    assert len(diffs) == 2 and max(diffs) < 1e-4  # the output, and the worst intermediate output


def break_torch(monkeypatch, old: str, new: str) -> None:
    """Make the torch backend render ``new`` where it renders ``old`` (the first time)."""
    render = TorchBackend.render

    def broken(self, analysis):
        text = render(self, analysis)
        assert old in text, old
        return text.replace(old, new, 1)

    monkeypatch.setattr(TorchBackend, "render", broken)


def test_a_wrong_bn_epsilon_is_caught_and_its_module_named(monkeypatch):
    break_torch(monkeypatch, "nn.BatchNorm2d(filters, eps=0.001, momentum=0.01)", "nn.BatchNorm2d(filters, eps=1e-05, momentum=0.01)")
    result = run("verify", XCEPTION, "--batch", "1")
    assert result.exit_code == 1, result.output
    assert "differ first in module entry/down1, at entry/down1/residual1/body/sep_bn1/bn1 (bn)" in result.output


def test_symmetric_instead_of_tf_same_padding_is_caught_where_it_differs(monkeypatch):
    """Every Down module's max pool gets torch's symmetric padding. On entry/down1's 147x147
    input TF pads 1 on each side too (an odd size), so the first module that differs is
    entry/down2 (74x74: TF pads 0 before, 1 after)."""
    break_torch(monkeypatch, "MaxPool2dSame(3, stride=2)", "nn.MaxPool2d(3, stride=2, padding=1)")
    result = run("verify", XCEPTION, "--batch", "1")
    assert result.exit_code == 1, result.output
    assert "differ first in module entry/down2, at entry/down2/residual1/body/maxpool1 (maxpool)" in result.output


def test_count_mismatches_are_caught_and_named(monkeypatch):
    break_torch(monkeypatch, "nn.Conv2d(32, 64, 3, bias=False)", "nn.Conv2d(32, 64, 3)")
    result = run("verify", XCEPTION)
    assert result.exit_code == 1, result.output
    assert "parameter counts differ in module entry/conv2: IR 18,432 + 0, torch 18,496 + 0" in result.output
    assert "DIFFERS" in result.output and "outputs of every instance" not in result.output  # no forward pass


def test_keras_count_mismatches_are_caught(monkeypatch, every_op):
    render = KerasBackend.render

    def broken(self, analysis):
        return render(self, analysis).replace('layers.Dense(5, name="head_dense2")', 'layers.Dense(5, use_bias=False, name="head_dense2")')

    monkeypatch.setattr(KerasBackend, "render", broken)
    result = run("verify", every_op)
    assert result.exit_code == 1, result.output
    assert "parameter counts differ in module head/dense2: IR 55 + 0, keras 50 + 0" in result.output


def test_verify_passes_for_every_op_and_its_variants(every_op):
    for params in ([], ["segments=2", "between=relu"], ["residual=false", "hidden=false", "between=elu"]):
        result = run("verify", every_op, *[a for p in params for a in ("-p", p)])
        assert result.exit_code == 0, (params, result.output)


def _swap_kernel_axes(inst, role, a):
    return a.swapaxes(0, 1) if inst.node.op == "conv" and role == "kernel" else a


LAYOUT_BUGS = {
    # a conv kernel with height and width swapped (on the way in and out: exports still round-trip)
    "conv kh/kw": (
        lambda orig: lambda inst, role, t: _swap_kernel_axes(inst, role, orig(inst, role, t)),
        lambda orig: lambda inst, role, a: orig(inst, role, _swap_kernel_axes(inst, role, a)),
        None,
        "stem/conv1",
    ),
    # a dense kernel reshaped instead of transposed
    "dense reshape": (
        lambda orig: (
            lambda inst, role, t: (
                t.detach().numpy().reshape(t.shape[::-1]) if role == "kernel" and inst.node.op == "dense" else orig(inst, role, t)
            )
        ),
        lambda orig: (
            lambda inst, role, a: a.reshape(a.shape[::-1]) if role == "kernel" and inst.node.op == "dense" else orig(inst, role, a)
        ),
        None,
        "head/dense1",
    ),
    # a depthwise kernel read as (multiplier, C) instead of (C, multiplier)
    "depthwise order": (
        lambda orig: (
            lambda inst, role, t: (
                t.detach().numpy().reshape(inst.node.depth_multiplier, -1, *t.shape[-2:]).transpose(2, 3, 1, 0)
                if role == "spatial" and inst.node.depth_multiplier > 1
                else orig(inst, role, t)
            )
        ),
        lambda orig: (
            lambda inst, role, a: (
                a.transpose(3, 2, 0, 1).reshape(-1, 1, *a.shape[:2])
                if role == "spatial" and inst.node.depth_multiplier > 1
                else orig(inst, role, a)
            )
        ),
        None,
        "body/residual1",
    ),
    # BN statistics swapped: moving mean into running_var and the variance into running_mean
    "bn statistics": (
        None,
        None,
        lambda orig: (
            lambda inst, module: (
                {**orig(inst, module), "moving_mean": module.running_var, "moving_variance": module.running_mean}
                if inst.node.op == "bn"
                else orig(inst, module)
            )
        ),
        "stem/bn1",
    ),
}


@pytest.mark.parametrize("bug", list(LAYOUT_BUGS))
def test_a_wrong_weight_layout_is_caught(bug, monkeypatch, every_op):
    to_neutral, from_neutral, tensors, module = LAYOUT_BUGS[bug]
    for name, patch in (("_to_neutral", to_neutral), ("_from_neutral", from_neutral), ("_tensors", tensors)):
        if patch is not None:
            monkeypatch.setattr(torch_weights, name, patch(getattr(torch_weights, name)))
    result = run("verify", every_op)
    assert result.exit_code == 1, result.output
    assert f"differ first in module {module}," in result.output


def test_an_export_that_does_not_invert_the_load_is_caught(monkeypatch, every_op):
    orig = torch_weights._from_neutral
    monkeypatch.setattr(torch_weights, "_from_neutral", lambda inst, role, a: orig(inst, role, a) * (2 if role == "beta" else 1))
    result = run("verify", every_op)
    assert result.exit_code == 1, result.output
    assert re.search(r"torch: exporting does not give back the weights it was given \(\S+: 'beta' differs\)", result.output)


class Renderless:
    """A backend that renders and counts but does not port weights."""

    name = "renderless"


def test_a_backend_without_weight_porting_is_named(monkeypatch, every_op):
    import archc.tools.verify as verify_module
    from archc.syntax.errors import UserError

    registered, get = verify_module.registered, verify_module.get
    monkeypatch.setattr(verify_module, "registered", lambda: {**registered(), "renderless": None})
    monkeypatch.setattr(verify_module, "get", lambda name: Renderless() if name == "renderless" else get(name))
    result = run("verify", every_op)
    assert result.exit_code == 0, result.output
    assert "backend 'renderless' does not port weights (no checkpoint_suffixes, export_weights" in result.output
    with pytest.raises(UserError, match="found 'renderless' without checkpoint_suffixes"):
        verify_module.verify(load(every_op), ["torch", "renderless"])


# -- convert ------------------------------------------------------------------------------------


def randomised_torch_checkpoint(spec: Path, path: Path, params: dict | None = None) -> dict:
    """A torch state_dict of the spec with every tensor random (BN statistics included)."""
    from archc.tools.verify import build_model

    model = build_model(TorchBackend(), load(spec, params), path.parent)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def h5_datasets(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("spec", ["xception", "every_op"])
def test_convert_round_trips_bit_for_bit(spec, tmp_path, every_op):
    import numpy as np

    path = XCEPTION if spec == "xception" else every_op
    original = randomised_torch_checkpoint(path, tmp_path / "a.pt")
    result = run("convert", path, tmp_path / "a.pt", tmp_path / "b.weights.h5")
    assert result.exit_code == 0, result.output
    assert "torch -> keras" in result.output
    result = run("convert", path, tmp_path / "b.weights.h5", tmp_path / "c.pt")
    assert result.exit_code == 0, result.output
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(back) == list(original)
    for name, tensor in original.items():
        if not name.endswith("num_batches_tracked"):  # no Keras counterpart (see docs/verify.md)
            assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    # keras -> torch -> keras
    result = run("convert", path, tmp_path / "c.pt", tmp_path / "d.weights.h5", "--from", "torch", "--to", "keras")
    assert result.exit_code == 0, result.output
    first, second = h5_datasets(tmp_path / "b.weights.h5"), h5_datasets(tmp_path / "d.weights.h5")
    assert first.keys() == second.keys() and len(first) > 0
    for name, value in first.items():
        assert value.dtype == second[name].dtype and np.array_equal(value, second[name]), name


def test_a_converted_checkpoint_gives_the_same_outputs(tmp_path, every_op):
    import numpy as np

    from archc.tools.verify import build_model

    analysis = load(every_op)
    randomised_torch_checkpoint(every_op, tmp_path / "a.pt")
    assert run("convert", every_op, tmp_path / "a.pt", tmp_path / "a.weights.h5").exit_code == 0
    torch_model = build_model(TorchBackend(), analysis, tmp_path)
    torch_model.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    keras_model = build_model(KerasBackend(), analysis, tmp_path)
    keras_model.load_weights(str(tmp_path / "a.weights.h5"))
    x = np.random.default_rng(0).standard_normal((2, 23, 22, 3)).astype("float32")
    expected, _ = TorchBackend().activations(torch_model, analysis, x, [])
    found, _ = KerasBackend().activations(keras_model, analysis, x, [])
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_convert_refuses_what_it_cannot_do(tmp_path, every_op):
    (tmp_path / "a.pt").write_bytes(b"")
    result = run("convert", every_op, tmp_path / "a.pt", tmp_path / "b.txt")
    assert result.exit_code == 2 and "expected a checkpoint file name ending in one of" in result.output
    result = run("convert", every_op, tmp_path / "a.pt", tmp_path / "b.pt")
    assert result.exit_code == 2 and "expected two different backends, found 'torch'" in result.output
    result = run("convert", every_op, tmp_path / "a.pt", tmp_path / "b.h5", "--to", "keras")
    assert result.exit_code == 2 and "expected an output file name ending in .weights.h5 for keras" in result.output
    randomised_torch_checkpoint(every_op, tmp_path / "c.pt")
    result = run("convert", every_op, tmp_path / "c.pt", tmp_path / "c.weights.h5", "-p", "segments=2")
    assert result.exit_code == 2 and "expected a torch checkpoint of 'every_op' with these params in" in result.output
    assert "size mismatch" in result.output and not (tmp_path / "c.weights.h5").exists()
