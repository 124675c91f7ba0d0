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
from archc.passes.instances import weighted
from archc.tools.export import generated_module
from archc.tools.verify import output_difference, porting_backends

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).parents[1]

# keras.applications constructor -> (spec, params, input size): the smallest variant, at a small size
FAMILIES = {
    "ResNet50": ("examples/resnet50.yaml", {}, 32),
    "VGG16": ("examples/vgg16.yaml", {}, 32),
    "VGG19": ("examples/vgg16.yaml", {"deep_convs": 4}, 32),
    "MobileNet": ("examples/mobilenet_v1.yaml", {}, 32),
    "MobileNetV2": ("examples/mobilenet_v2.yaml", {}, 32),
    "MobileNetV3Small": ("examples/mobilenet_v3.yaml", {}, 32),
    "DenseNet121": ("examples/densenet.yaml", {}, 32),
    "EfficientNetB0": ("examples/efficientnet.yaml", {}, 32),
    "ConvNeXtTiny": ("examples/convnext.yaml", {}, 32),
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
    analysis = load(ROOT / spec, params or None, (size, size))
    backends = porting_backends(["keras", "torch"])[0]
    common = [ROOT / spec, *(f"-p{k}={v}" for k, v in params.items()), "--from", "keras.applications", "--image-size", size]

    result = run("import", *common, files["h5"], "--to", "keras", "-o", tmp_path / "k.weights.h5")
    assert result.exit_code == 0, result.output
    ours = generated_module(backends["keras"], analysis, tmp_path).create_model()
    ours.load_weights(tmp_path / "k.weights.h5")
    assert output_difference(expected, np.asarray(ours(x, training=False))).rel <= 1e-5

    result = run("import", *common, files["weights.h5"], "--to", "torch", "-o", tmp_path / "t.pt")
    assert result.exit_code == 0, result.output
    out = torch_output(generated_module(backends["torch"], analysis, tmp_path).create_model(), tmp_path / "t.pt", x)
    assert output_difference(expected, out).rel <= 1e-4


@pytest.mark.parametrize(
    "params, reference",
    [({"blocks3": 23}, "ResNet101"), ({"blocks2": 8, "blocks3": 36}, "ResNet152")],
    ids=["ResNet101", "ResNet152"],
)
def test_resnet_depth_params_are_the_deeper_keras_applications_models(params, reference):
    from archc.codegen.backend import get

    analysis = load(ROOT / "examples/resnet50.yaml", params)
    model = getattr(keras.applications, reference)(weights=None)
    assert get("keras").count(model) == (analysis.total.trainable, analysis.total.non_trainable)


def test_a_file_of_another_architecture_names_the_first_layer_that_does_not_fit(tmp_path):
    """MobileNetV2's file into the MobileNet spec: both begin with a conv, BN, depthwise conv
    and BN of the same shapes; the pointwise conv after them is 64 wide in MobileNet and
    projects to 16 in MobileNetV2. Both layouts, one line, nothing written."""
    files = saved(keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3)), tmp_path)
    for layout in ("h5", "weights.h5"):
        out = tmp_path / "w.pt"
        result = run(
            "import",
            ROOT / "examples/mobilenet_v1.yaml",
            "--from",
            "keras.applications",
            files[layout],
            "--to",
            "torch",
            "-o",
            out,
            "--image-size",
            32,
        )
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith("the architectures differ") and "'features_dw_pw1_conv2'" in lines[0], result.output
        assert not out.exists()


# -- --partial: into variants ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def xception(tmp_path_factory):
    """keras.applications Xception at 71x71 with random weights, saved as shipped; its
    outputs on a grey image repeated in the three channels."""
    folder = tmp_path_factory.mktemp("xception")
    rng = np.random.default_rng(1)
    ref = randomised(keras.applications.Xception(weights=None, input_shape=(71, 71, 3), classifier_activation=None), rng)
    grey = rng.uniform(-1, 1, (2, 71, 71, 1)).astype("float32")
    return saved(ref, folder)["h5"], grey, np.asarray(ref(np.repeat(grey, 3, axis=-1), training=False))


def partial(spec, h5, out, *args):
    result = run("import", spec, *args, "--partial", "--from", "keras.applications", h5, "--to", "keras", "-o", out, "--image-size", 71)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    return lines[0], lines[1:-1]


def test_partial_into_segments_4_skips_only_the_spatial_kernels(xception, tmp_path):
    """Each separable conv's depthwise kernel (3, 3, C, 1) is a grouped conv's (3, 3, C/4, C)
    in the variant; its pointwise kernel, every BN and the classifier keep their places."""
    h5, _, _ = xception
    summary, lines = partial(ROOT / "specs/xception.yaml", h5, tmp_path / "s4.weights.h5", "-p", "segments=4")
    analysis = load(ROOT / "specs/xception.yaml", None, (71, 71))
    separable = [i for i in weighted(analysis) if i.node.op == "sepconv"]
    assert len(separable) == 34
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [f"skipped {i.key}" for i in separable]
    assert all(":spatial: (3, 3, " in line and ", 1) in the file, (3, 3, " in line for line in skipped)
    tensors = sum(len(i.node.roles(i.input)) for i in weighted(analysis))
    assert summary == f"matched {tensors - 34} tensors, adapted 0, skipped 34, new 0, unused 0"


def test_partial_into_10_classes_leaves_only_the_classifier_fresh(xception, tmp_path):
    h5, grey, _ = xception
    summary, lines = partial(ROOT / "specs/xception.yaml", h5, tmp_path / "c10.weights.h5", "-p", "classes=10")
    assert lines == [
        "skipped head/classifier:kernel: (2048, 1000) in the file, (2048, 10) here",
        "skipped head/classifier:bias: (1000,) in the file, (10,) here",
    ]
    assert summary.endswith("adapted 0, skipped 2, new 0, unused 0")


def test_partial_three_to_one_channel_gives_the_source_output_on_grey(xception, tmp_path):
    """A one-channel variant (a copy of the spec whose input channels are a param): its
    first conv's kernel summed over the input channels gives, on a grey image, what the
    source gives on that image repeated three times; in Keras and in torch."""
    h5, grey, expected = xception
    text = (ROOT / "specs/xception.yaml").read_text().replace("input: [299, 299, 3]", "input: [299, 299, $channels]")
    spec = tmp_path / "xception.yaml"
    spec.write_text(text.replace("params:\n", "params:\n  channels: {default: 3, min: 1}\n", 1))
    summary, lines = partial(spec, h5, tmp_path / "grey.weights.h5", "-p", "channels=1")
    assert lines == ["adapted entry/conv1:kernel: (3, 3, 3, 32) -> (3, 3, 1, 32), summed over the input channels"]
    assert summary.startswith("matched ") and summary.endswith("adapted 1, skipped 0, new 0, unused 0")
    analysis = load(spec, {"channels": 1}, (71, 71))
    backends = porting_backends(["keras", "torch"])[0]
    ours = generated_module(backends["keras"], analysis, tmp_path).create_model()
    ours.load_weights(tmp_path / "grey.weights.h5")
    assert output_difference(expected, np.asarray(ours(grey, training=False))).rel <= 1e-5
    result = run(
        "import",
        spec,
        "-p",
        "channels=1",
        "--partial",
        "--from",
        "keras.applications",
        h5,
        "--to",
        "torch",
        "-o",
        tmp_path / "g.pt",
        "--image-size",
        71,
    )
    assert result.exit_code == 0, result.output
    out = torch_output(generated_module(backends["torch"], analysis, tmp_path).create_model(), tmp_path / "g.pt", grey)
    assert output_difference(expected, out).rel <= 1e-4


def test_partial_repeats_and_scales_for_more_channels():
    from archc.tools.transfer import adapt_input_kernel

    kernel = np.arange(2 * 2 * 3 * 4, dtype="float32").reshape(2, 2, 3, 4)
    five = adapt_input_kernel(kernel, 5)
    assert five.shape == (2, 2, 5, 4)
    np.testing.assert_allclose(five, np.concatenate([kernel, kernel[:, :, :2]], axis=2) * 3 / 5, rtol=1e-6)
    x = np.ones(3, dtype="float32")  # a uniform input keeps the response, as in timm
    np.testing.assert_allclose(np.einsum("hwio,i->o", adapt_input_kernel(kernel, 6), np.ones(6)), np.einsum("hwio,i->o", kernel, x))


def test_source_param_needs_partial(xception, tmp_path):
    h5, _, _ = xception
    result = run(
        "import",
        ROOT / "specs/xception.yaml",
        "--source-param",
        "classes=10",
        "--from",
        "keras.applications",
        h5,
        "--to",
        "keras",
        "-o",
        tmp_path / "w.weights.h5",
    )
    assert result.exit_code == 2 and "--source-param only with --partial" in result.output
