"""EfficientNet and MobileNetV2 (examples/, written with expressions) against
keras.applications (Keras 3.15, weights=None): the counts of every size Keras offers,
the same outputs after a layer-by-layer weight copy, the same drop-path rates; the torch
models count what the IR counts, agree with the Keras ones (archc verify) and train.
Models are built at small input sizes (the counts do not depend on it) to stay fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from archc.api import build, load
from archc.cli import main
from archc.codegen.backend import get

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before anything imports keras

ROOT = Path(__file__).parents[1]
EFFICIENTNET = ROOT / "examples/efficientnet.yaml"
MOBILENET_V2 = ROOT / "examples/mobilenet_v2.yaml"

# keras.applications.EfficientNetB<n>(weights=None) and MobileNetV2(alpha, weights=None),
# trainable and non-trainable counts, measured with Keras 3.15.
EFFICIENTNETS = {
    "B0": ({"width": 1.0, "depth": 1.0, "resolution": 224, "dropout": 0.2}, 5_288_548, 42_023),
    "B1": ({"width": 1.0, "depth": 1.1, "resolution": 240, "dropout": 0.2}, 7_794_184, 62_055),
    "B2": ({"width": 1.1, "depth": 1.2, "resolution": 260, "dropout": 0.3}, 9_109_994, 67_575),
    "B3": ({"width": 1.2, "depth": 1.4, "resolution": 300, "dropout": 0.3}, 12_233_232, 87_303),
    "B4": ({"width": 1.4, "depth": 1.8, "resolution": 380, "dropout": 0.4}, 19_341_616, 125_207),
    "B5": ({"width": 1.6, "depth": 2.2, "resolution": 456, "dropout": 0.4}, 30_389_784, 172_743),
    "B6": ({"width": 1.8, "depth": 2.6, "resolution": 528, "dropout": 0.5}, 43_040_704, 224_439),
    "B7": ({"width": 2.0, "depth": 3.1, "resolution": 600, "dropout": 0.5}, 66_347_960, 310_727),
}
MOBILENET_V2S = {
    0.35: (1_677_128, 14_080),
    0.5: (1_968_680, 18_544),
    0.75: (2_636_424, 26_640),
    1.0: (3_504_872, 34_112),
    1.3: (5_386_792, 44_256),
    1.4: (6_108_776, 47_936),
}


@pytest.mark.parametrize("variant", EFFICIENTNETS)
def test_efficientnet_counts_are_keras_applications(variant):
    params, trainable, non_trainable = EFFICIENTNETS[variant]
    analysis = load(EFFICIENTNET, params)
    assert (analysis.total.trainable, analysis.total.non_trainable) == (trainable, non_trainable)
    assert analysis.net.input == (params["resolution"], params["resolution"], 3)


@pytest.mark.parametrize("alpha", MOBILENET_V2S)
def test_mobilenet_v2_counts_are_keras_applications(alpha):
    analysis = load(MOBILENET_V2, {"alpha": alpha})
    assert (analysis.total.trainable, analysis.total.non_trainable) == MOBILENET_V2S[alpha]


# -- the models ---------------------------------------------------------------------------------

CASES = {
    # spec, small params, the keras.applications model at that size
    "efficientnet": (EFFICIENTNET, {"resolution": 64}, lambda app: app.EfficientNetB0(input_shape=(64, 64, 3))),
    "mobilenet_v2": (MOBILENET_V2, {"size": 96}, lambda app: app.MobileNetV2(input_shape=(96, 96, 3))),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each family's generated modules: {name: (keras module, torch module)}."""
    out = tmp_path_factory.mktemp("families")
    modules = {}
    for name, (spec, _, _) in CASES.items():
        paths = {p.name: p for p in build(spec, ["keras", "torch"], out)}
        modules[name] = (get("keras").load(paths[f"{name}_keras.py"]), get("torch").load(paths[f"{name}_torch.py"]))
    return modules


def weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


@pytest.mark.parametrize("name", CASES)
def test_keras_model_is_keras_applications(name, built):
    """The Xception test's method: pair the weighted layers in call order, same class and
    weight shapes; randomise the reference's BN statistics, offsets, biases and the input
    normalization so that a wrong pairing shows; then the same outputs."""
    import keras
    import numpy as np

    spec, params, reference = CASES[name]
    ref = reference(_Defaults(keras.applications))
    ours = built[name][0].create_model(**params)
    assert get("keras").count(ours) == get("keras").count(ref) == (load(spec).total.trainable, load(spec).total.non_trainable)
    rng = np.random.default_rng(0)
    for theirs, mine in zip(weighted_layers(ref), weighted_layers(ours), strict=True):
        assert type(theirs) is type(mine), (theirs.name, mine.name)
        assert [w.shape for w in theirs.weights] == [w.shape for w in mine.weights], (theirs.name, mine.name)
        values = [np.asarray(w) if w.name.endswith("kernel") else rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in theirs.weights]
        theirs.set_weights(values)
        mine.set_weights(values)
    size = ours.input_shape[1:]
    x = rng.uniform(0, 255, (2, *size)).astype("float32")
    expected = np.asarray(ref(x, training=False))
    found = np.asarray(ours(x, training=False))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


class _Defaults:
    """keras.applications with weights=None and logits out, as the examples are."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return lambda **kw: getattr(self.app, name)(weights=None, classifier_activation=None, **kw)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("efficientnet", {"width": 1.1, "depth": 1.2, "resolution": 64}), ("mobilenet_v2", {"alpha": 0.35, "size": 96})],
)
def test_keras_create_model_overrides_give_archc_counts(name, overrides, built):
    """Widths, depths and repeat counts stay code in the generated module."""
    model = built[name][0].create_model(**overrides)
    analysis = load(CASES[name][0], overrides)
    assert get("keras").count(model) == (analysis.total.trainable, analysis.total.non_trainable)
    assert model.input_shape[1:3] == analysis.net.input[:2]


@pytest.mark.parametrize("variant", ["B0", "B3"])
def test_drop_path_rates_are_keras_applications(variant, built):
    """Stochastic depth grows with the block's index over the whole network, as Keras's
    EfficientNet has it: the torch model's DropPath rates (each repeat builds its blocks
    with the index) are the rates of keras.applications' per-sample Dropouts."""
    import keras

    params = EFFICIENTNETS[variant][0]
    ref = getattr(keras.applications, f"EfficientNet{variant}")(weights=None, input_shape=(64, 64, 3))
    expected = [layer.rate for layer in ref.layers if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None]
    model = built["efficientnet"][1].create_model(**{k: v for k, v in params.items() if k != "resolution"})
    found = [m.rate for m in model.modules() if type(m).__name__ == "DropPath"]
    assert found == expected and len(found) > 1


@pytest.mark.parametrize("name", CASES)
def test_torch_counts_and_training_step(name, built):
    import torch

    spec, params, _ = CASES[name]
    torch_params = {k: v for k, v in params.items() if k not in ("resolution", "size")}
    for overrides in ({}, {"width": 1.1, "depth": 1.2} if name == "efficientnet" else {"alpha": 0.35}):
        model = built[name][1].create_model(**torch_params, **overrides)
        analysis = load(spec, overrides)
        assert get("torch").count(model) == (analysis.total.trainable, analysis.total.non_trainable)
    torch.manual_seed(0)
    size = params.get("resolution") or params["size"]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 2])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    optimizer.step()
    assert torch.nn.functional.cross_entropy(model(x), y).isfinite()


@pytest.mark.parametrize("name", CASES)
def test_archc_verify_passes(name):
    spec, params, _ = CASES[name]
    args = [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    result = CliRunner().invoke(main, ["verify", str(spec), *args, "--batch", "1"])
    assert result.exit_code == 0, result.output
    assert "ok: counts agree and outputs agree within 0.0001 relative" in result.output


def test_convnext_drop_path_rates_are_keras_applications(tmp_path):
    """ConvNeXt's rates, from 0 to drop_path over all blocks (numpy's linspace in Keras,
    whose ConvNeXt leaves out the first block's zero-rate layer)."""
    from keras.src.applications.convnext import ConvNeXt  # ConvNeXtTiny() does not take the rate

    ref = ConvNeXt(depths=[3, 3, 9, 3], projection_dims=[96, 192, 384, 768], drop_path_rate=0.1, weights=None, input_shape=(32, 32, 3))
    expected = [layer.drop_path_rate for layer in ref.layers if type(layer).__name__ == "StochasticDepth"]
    (path,) = build(ROOT / "examples/convnext.yaml", ["torch"], tmp_path)
    model = get("torch").load(path).create_model(drop_path=0.1)
    found = [m.rate for m in model.modules() if type(m).__name__ == "DropPath"]
    assert found[0] == 0.0 and found[1:] == expected and len(expected) == 17
