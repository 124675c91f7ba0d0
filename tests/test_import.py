"""``archc import --from keras.applications`` for every family the specs express, and
``--partial`` into variants. Each test builds the keras.applications model with random
weights (weights=None; BN statistics, scales, offsets and biases randomised, so that a
wrong pairing shows), saves them as keras.applications ships them (``.h5``) and as Keras
3 saves them (``.weights.h5``), imports them at a small input size, and compares the
outputs: 1e-5 relative in Keras, 1e-4 in torch. (Xception and InceptionV3, both layouts
into both frameworks: tests/test_export.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.tools.export import generated_module
from archc.tools.verify import output_difference, porting_backends

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).parents[1]

# keras.applications constructor -> (spec, params, input size): the smallest variant, at a small size
FAMILIES = {
    "ResNet50": ("examples/resnet50.yaml", [], 32),
    "VGG16": ("examples/vgg16.yaml", [], 32),
    "MobileNet": ("examples/mobilenet_v1.yaml", [], 32),
    "MobileNetV2": ("examples/mobilenet_v2.yaml", [], 32),
    "MobileNetV3Small": ("examples/mobilenet_v3.yaml", [], 32),
    "DenseNet121": ("examples/densenet.yaml", [], 32),
    "EfficientNetB0": ("examples/efficientnet.yaml", [], 32),
    "ConvNeXtTiny": ("examples/convnext.yaml", [], 32),
}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def randomised(model, rng):
    """Every weight but the kernels (and Normalization's count) drawn from U(0.5, 1.5)."""
    for layer in model.layers:
        for inner in getattr(layer, "layers", [layer]):
            values = [
                np.asarray(w) if w.name.endswith("kernel") or w.name == "count" else rng.uniform(0.5, 1.5, w.shape).astype("float32")
                for w in inner.weights
            ]
            inner.set_weights(values)
            if hasattr(inner, "finalize_state"):  # Normalization: its mean and variance are copies
                inner.finalize_state()
    return model


def saved(model, folder: Path) -> dict[str, Path]:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model.save_weights(folder / "ref.weights.h5")
    with h5py.File(folder / "ref.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return {"h5": folder / "ref.h5", "weights.h5": folder / "ref.weights.h5"}


def torch_output(module_model, checkpoint, x):
    module_model.load_state_dict(torch.load(checkpoint, weights_only=True))
    with torch.no_grad():
        return module_model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_every_family(family, tmp_path):
    """The shipped layout into Keras, Keras 3's into torch."""
    spec, params, size = FAMILIES[family]
    rng = np.random.default_rng(0)
    ref = randomised(getattr(keras.applications, family)(weights=None, input_shape=(size, size, 3), classifier_activation=None), rng)
    files = saved(ref, tmp_path)
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = np.asarray(ref(x, training=False))
    assert np.abs(expected).max() > 1e-3
    analysis = load(ROOT / spec, None, (size, size))
    backends = porting_backends(["keras", "torch"])[0]
    common = [ROOT / spec, *params, "--from", "keras.applications", "--image-size", size]

    result = run("import", *common, files["h5"], "--to", "keras", "-o", tmp_path / "k.weights.h5")
    assert result.exit_code == 0, result.output
    ours = generated_module(backends["keras"], analysis, tmp_path).create_model()
    ours.load_weights(tmp_path / "k.weights.h5")
    assert output_difference(expected, np.asarray(ours(x, training=False))).rel <= 1e-5

    result = run("import", *common, files["weights.h5"], "--to", "torch", "-o", tmp_path / "t.pt")
    assert result.exit_code == 0, result.output
    out = torch_output(generated_module(backends["torch"], analysis, tmp_path).create_model(), tmp_path / "t.pt", x)
    assert output_difference(expected, out).rel <= 1e-4
