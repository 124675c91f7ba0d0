"""Batch norm that CUDA can train: the generated code never calls batch norm with exactly
one of weight and bias. CUDA's kernels refuse that combination (a Keras BN with
``scale: false`` or ``center: false``) while the CPU's accept it, so this invariant is what
a CPU-only CI can check; ../shared/gpu/train_smoke.py checks the GPU itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundled import buildable

torch = pytest.importorskip("torch")

from archc.api import load  # noqa: E402
from archc.codegen.backend import get, write_all  # noqa: E402

ROOT = Path(__file__).parents[1]
BACKEND = get("torch")
GENERATED = sorted((ROOT / "generated").glob("*_torch.py"))
EXAMPLES = buildable(sorted((ROOT / "examples").glob("*.yaml")))
REAL_BATCH_NORM = torch.nn.functional.batch_norm

EVERY_BN = """
name: every_bn
input: [12, 12, 3]
params:
  center: true
  scale: true
flows:
  body:
    - conv: {filters: 4, kernel: 3, bias: false}
    - bn: {center: $center, scale: $scale}
    - act: relu
    - flatten
    - dense: 6
    - bn: {center: $center, scale: $scale}
    - dense: 2
"""


@pytest.fixture
def batch_norm_calls(monkeypatch):
    """Every call of torch.nn.functional.batch_norm: (weight given, bias given)."""
    calls: list[tuple[bool, bool]] = []

    def spy(input, running_mean, running_var, weight=None, bias=None, *args, **kwargs):
        calls.append((weight is not None, bias is not None))
        return REAL_BATCH_NORM(input, running_mean, running_var, weight, bias, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", spy)
    return calls


def run_both_modes(model, input_size, batch: int = 2) -> None:
    x = torch.randn(batch, *input_size)
    with torch.no_grad():
        model.train()(x)
        model.eval()(x)


def render(spec: Path, tmp_path: Path, overrides=None, size=None):
    analysis = load(spec, overrides, size)
    path = tmp_path / f"{analysis.net.name}_{abs(hash(str(overrides)))}_torch.py"
    write_all({path: BACKEND.render(analysis)})
    return BACKEND.load(path)


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.stem)
def test_generated_models_pass_weight_and_bias_together(path, batch_norm_calls):
    module = BACKEND.load(path)
    run_both_modes(module.create_model(), module.INPUT_SIZE, batch=1)
    assert batch_norm_calls and all(weight == bias for weight, bias in batch_norm_calls), set(batch_norm_calls)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_examples_pass_weight_and_bias_together(spec, tmp_path, batch_norm_calls):
    module = render(spec, tmp_path, size=(64, 64))
    run_both_modes(module.create_model(), module.INPUT_SIZE)
    assert all(weight == bias for weight, bias in batch_norm_calls), set(batch_norm_calls)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_every_center_scale_combination_keeps_keras_arithmetic(center, scale, tmp_path, batch_norm_calls):
    """The constant passed for the missing one changes no value, no parameter and no
    state_dict key: the same numbers as batch norm with only the weight or the bias."""
    spec = tmp_path / "every_bn.yaml"
    spec.write_text(EVERY_BN)
    model = render(spec, tmp_path, {"center": center, "scale": scale}).create_model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2
    for bn in bns:
        with torch.no_grad():
            if bn.weight is not None:
                bn.weight.uniform_(0.5, 1.5)
            if bn.bias is not None:
                bn.bias.uniform_(-1, 1)
        assert (bn.weight is not None, bn.bias is not None) == (scale, center)
        assert sorted(bn.state_dict()) == sorted(
            [*(["weight"] if scale else []), *(["bias"] if center else []), "running_mean", "running_var", "num_batches_tracked"]
        )
        x = torch.randn(4, bn.num_features, *((3, 3) if isinstance(bn, torch.nn.BatchNorm2d) else ()))
        for training in (True, False):
            reference = (bn.running_mean.clone(), bn.running_var.clone())
            expected = REAL_BATCH_NORM(x, *reference, bn.weight, bn.bias, training, bn.momentum, bn.eps)
            with torch.no_grad():
                found = bn.train(training)(x)
            assert torch.equal(found, expected)
            assert torch.equal(bn.running_mean, reference[0]) and torch.equal(bn.running_var, reference[1])
    assert batch_norm_calls and all(weight == bias for weight, bias in batch_norm_calls)
