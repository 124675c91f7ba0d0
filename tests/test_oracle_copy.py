"""The generated torch models give their outside references' outputs (issue 21): each
reference of tests/graph_oracles.py is built with random weights (no download; He-normal,
and its batch norms' statistics and affine terms drawn at random too, so that a role
copied into the wrong slot shows), its state_dict is copied into the model that archc's torch backend
generates by structure (archc's weighted instances in network order, role by role,
against the state_dict in its order: weights.network_order), and both run in eval mode
on the same random input; every output agrees within 1e-5 of the reference's largest
value (fp32).

Input sizes are chosen so that every resize is by an exact factor: archc's nearest
resize is TF's half-pixel rule (torch's 'nearest-exact'), which equals the 'nearest'
that torchvision's FPN and smp's U-Net decoder use only at integer factors. At 128x128
the ResNet levels are 32, 16, 8, 4 (FPN, U-Net: each top-down step doubles) and
DeepLab's output-stride-8 map is 16x16 (a bilinear x8 back to the input). Inception runs
at its own 299x299 (its auxiliary head needs a 17x17 grid).

These need torchvision and segmentation_models_pytorch, which only the benchmark venv
has (`make oracles`); elsewhere they skip."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("segmentation_models_pytorch")

import graph_oracles  # noqa: E402  (tests/ is on the path; imports torch)

from archc.api import load  # noqa: E402
from archc.backends.torch_backend.weights import network_order  # noqa: E402
from archc.codegen.backend import get  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# oracle -> (spec, params, input size)
CASES = {
    "deeplabv3": ("examples/deeplabv3.yaml", {}, 128),
    "unet_resnet34": ("examples/unet_resnet34.yaml", {}, 128),
    "resnet50_fpn": ("examples/resnet50_fpn.yaml", {}, 128),
    "inception_v3_aux": ("specs/inception_v3_slim.yaml", {"aux_logits": True, "torch_layout": True}, 299),
}
TOLERANCE = 1e-5


def _randomize(model) -> None:
    """Weights that keep the activations' scale through the depth (He-normal: torch's
    default init shrinks them layer by layer, and Inception's logits would be little more
    than the classifier's bias), and batch norm statistics and affine terms away from
    their 0/1 initial values: a copy that put a mean into a variance, or a gamma into a
    beta, changes the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))


def _generated(analysis, folder: Path):
    path = folder / f"{analysis.net.name}_torch.py"
    path.write_text(get("torch").render(analysis), encoding="utf-8")
    return get("torch").load(path).create_model().eval()


def copy_by_structure(reference, model, analysis) -> int:
    """The reference's state_dict (less num_batches_tracked, no weight of the network)
    into ``model``, tensor for tensor in network order; the number of values copied."""
    source = [(k, t) for k, t in reference.state_dict().items() if not k.endswith("num_batches_tracked")]
    target = network_order(model, analysis)
    assert len(target) == len(source), (len(target), len(source))
    with torch.no_grad():
        for (key, t), (ref_key, ref_t) in zip(target, source, strict=True):
            assert t.shape == ref_t.shape, f"{key} {tuple(t.shape)} <- {ref_key} {tuple(ref_t.shape)}"
            t.copy_(ref_t)
    return sum(t.numel() for _, t in source)


@pytest.mark.parametrize("oracle", CASES)
def test_the_generated_model_gives_the_references_outputs_after_a_copy_by_structure(oracle, tmp_path):
    spec, params, size = CASES[oracle]
    analysis = load(ROOT / spec, params, (size, size))
    torch.manual_seed(0)
    reference = graph_oracles.MODELS[oracle]().eval()
    _randomize(reference)
    model = _generated(analysis, tmp_path)
    copied = copy_by_structure(reference, model, analysis)
    # every value of the generated model came from the reference (nothing left at its init)
    assert copied == sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert copied == analysis.total.trainable + analysis.total.non_trainable

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = graph_oracles.named_outputs(oracle, reference, x)
        got = model(x)
    got = got if isinstance(got, dict) else {next(iter(analysis.outputs)): got}
    assert list(got) == list(expected) == list(analysis.outputs)
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        scale = want.abs().max().item()
        assert scale > 0, name
        rel = (got[name] - want).abs().max().item() / scale
        assert rel <= TOLERANCE, f"{oracle} {name}: largest difference {rel:.2e} of the largest |output| {scale:.3g}"
