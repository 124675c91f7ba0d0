"""The backbone API of the generated modules (docs/reuse.md): torch's
``create_model(features_only=True, out_indices=...)``, ``feature_info``,
``forward_features`` / ``forward_head`` / ``reset_classifier`` as timm has them, and
Keras's ``create_model(include_top=False, pooling=...)`` as keras.applications has it,
plus a features model with one output per tap. Every model is built at a small input
size: the taps' reductions are nominal, and the counts without the top do not depend on
the size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from archc.api import load
from archc.passes.taps import taps
from archc.tools.export import generated_module
from archc.tools.verify import porting_backends

torch = pytest.importorskip("torch")

ROOT = Path(__file__).parents[1]
FIVE = [2, 4, 8, 16, 32]

# spec, params, timm model, timm 1.0's features_only channels and reductions (the issue's
# acceptance; test_timm_agrees re-measures them where timm is installed)
TIMM = [
    ("specs/xception.yaml", {}, "legacy_xception", [64, 128, 256, 728, 2048], FIVE),
    ("specs/inception_v3_slim.yaml", {}, "inception_v3", [64, 192, 288, 768, 2048], FIVE),
    ("examples/resnet50.yaml", {}, "resnet50", [64, 256, 512, 1024, 2048], FIVE),
    ("examples/densenet.yaml", {}, "densenet121", [64, 256, 512, 1024, 1024], FIVE),
    ("examples/mobilenet_v3.yaml", {"large": True}, "mobilenetv3_large_100", [16, 24, 40, 112, 960], FIVE),
    ("examples/mobilenet_v3.yaml", {}, "mobilenetv3_small_100", [16, 16, 24, 48, 576], FIVE),
    ("examples/convnext.yaml", {}, "convnext_tiny", [96, 192, 384, 768], [4, 8, 16, 32]),
]

# every bundled spec whose features are a chain of modules, at a small input size where the
# taps keep their nominal reductions (MobileNetV3's pool is inside a block that spans one
# reduction step only from 224; Inception's 'valid' windows: test_inceptions_aux_head)
SIZES = {"xception": 71, "mobilenet_v3": 224, "inception_v3": 299, "inception_v3_slim": 299}
CLASSIFIERS = ["specs/xception.yaml"]
CLASSIFIERS += [f"examples/{n}.yaml" for n in ("convnext", "densenet", "efficientnet", "mobilenet_v1", "mobilenet_v2")]
CLASSIFIERS += [f"examples/{n}.yaml" for n in ("mobilenet_v3", "resnet50", "vgg16")]
GRAPHS = ["examples/unet_resnet34.yaml", "examples/resnet50_fpn.yaml"]


def torch_module(spec: str, params: dict, tmp_path: Path, size: int | None = None):
    """The generated torch module of ``spec`` and its analysis, at ``size`` (or the small default)."""
    size = size or SIZES.get(Path(spec).stem, 32)
    analysis = load(ROOT / spec, params or None, input_size=(size, size))
    folder = tmp_path / "_".join([Path(spec).stem, *(f"{k}{v}" for k, v in params.items())])
    folder.mkdir(exist_ok=True)
    return generated_module(porting_backends(["torch"])[0]["torch"], analysis, folder), analysis


@pytest.mark.parametrize("spec, params, model, channels, reductions", TIMM, ids=[t[2] for t in TIMM])
def test_feature_info_is_timms(spec, params, model, channels, reductions, tmp_path):
    module, _ = torch_module(spec, params, tmp_path)
    info = module.create_model(**params).feature_info
    assert info.channels() == channels and info.reduction() == reductions
    assert [d["num_chs"] for d in info] == channels and len(info) == len(channels)
    features = module.create_model(features_only=True, **params)
    assert features.feature_info.channels() == channels and features.feature_info.reduction() == reductions


@pytest.mark.parametrize("spec, params, model, channels, reductions", TIMM, ids=[t[2] for t in TIMM])
def test_timm_agrees(spec, params, model, channels, reductions):
    """Only where timm is installed (.venv-bench: make oracles)."""
    timm = pytest.importorskip("timm")
    found = timm.create_model(model, features_only=True, pretrained=False).feature_info
    assert found.channels() == channels and found.reduction() == reductions


@pytest.mark.parametrize("spec", CLASSIFIERS + GRAPHS, ids=lambda s: Path(s).stem)
def test_the_feature_maps_are_the_taps(spec, tmp_path):
    module, analysis = torch_module(spec, {}, tmp_path)
    model = module.create_model().eval()
    found = taps(analysis)
    assert [(d["num_chs"], d["reduction"]) for d in model.feature_info] == [(t.channels, t.reduction) for t in found]
    x = torch.randn(1, *module.INPUT_SIZE)
    features = module.create_model(features_only=True).eval()
    assert set(features.state_dict()) <= set(model.state_dict())
    features.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        maps = features(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(t.channels, *t.shape[:2]) for t in found]
        two = module.create_model(features_only=True, out_indices=(1, -1)).eval()
        two.load_state_dict(model.state_dict(), strict=False)
        assert [m.shape for m in two(x)] == [maps[1].shape, maps[-1].shape]
        assert torch.equal(two(x)[0], maps[1])
    assert two.feature_info.channels() == [found[1].channels, found[-1].channels]
    with pytest.raises(ValueError, match="out_indices"):
        module.create_model(features_only=True, out_indices=(len(found),))


def test_the_features_stop_at_the_last_map_they_return(tmp_path):
    """out_indices=(1,) of ResNet50 runs the stem and stage1 only: no later stage runs."""
    module, _ = torch_module("examples/resnet50.yaml", {}, tmp_path)
    features = module.create_model(features_only=True, out_indices=(1,))
    ran = []
    for name, child in features.named_modules():
        child.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    features(torch.randn(1, *module.INPUT_SIZE))
    assert "stages.stage1" in ran and not any(n.startswith(("stages.stage2", "head")) for n in ran)
    assert not hasattr(features, "head")


@pytest.mark.parametrize("spec", CLASSIFIERS, ids=lambda s: Path(s).stem)
def test_forward_head_of_forward_features_is_forward(spec, tmp_path):
    module, analysis = torch_module(spec, {}, tmp_path)
    model = module.create_model().eval()
    x = torch.randn(1, *module.INPUT_SIZE)
    with torch.no_grad():
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x))
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (1, model.head_hidden_size)
        before = sum(p.numel() for p in model.parameters())
        classifier = model.get_submodule(module.CLASSIFIER)
        model.reset_classifier(10)
        assert model(x).shape == (1, 10)
        new = model.get_submodule(module.CLASSIFIER)
        assert sum(p.numel() for p in model.parameters()) == before - sum(p.numel() for p in classifier.parameters()) + sum(
            p.numel() for p in new.parameters()
        )
        model.reset_classifier(0)
        assert torch.equal(model.eval()(x), pooled)


def test_a_graph_backbone_stops_at_its_encoder(tmp_path):
    """U-Net: the taps end where the decoder reads the skips (no segmentation map at
    reduction 1); FPN: where the lateral convs read the stages; neither has a head to
    split off. DeepLabV3's head keeps the dilated backbone's reduction and follows it
    through branches (ASPP): its features are no chain of modules, so no backbone API."""
    unet, _ = torch_module("examples/unet_resnet34.yaml", {}, tmp_path)
    assert unet.create_model().feature_info.module_name() == ["encoder.act1", *(f"encoder.layer{i}" for i in range(1, 5))]
    assert not hasattr(unet.create_model(), "forward_head")
    fpn = taps(load(ROOT / "examples/resnet50_fpn.yaml"))
    assert [t.module for t in fpn][1:] == [f"backbone/layer{i}" for i in range(1, 5)]
    deeplab, _ = torch_module("examples/deeplabv3.yaml", {}, tmp_path)
    assert not hasattr(deeplab, "FEATURE_INFO") and not hasattr(deeplab.create_model(), "feature_info")


def test_inceptions_aux_head_is_a_side_output(tmp_path):
    """With aux_logits the features still run Mixed_6e then Mixed_7a on its output (the
    walk goes back to the tensor Mixed_7a reads), and forward_head(forward_features(x))
    is forward's logits."""
    module, analysis = torch_module("specs/inception_v3_slim.yaml", {"aux_logits": True}, tmp_path)
    assert [t.channels for t in taps(analysis)] == [64, 192, 288, 768, 2048]
    model = module.create_model(aux_logits=True).eval()
    x = torch.randn(1, *module.INPUT_SIZE)
    with torch.no_grad():
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x)["logits"])


# keras.applications constructor -> (spec, params, the smallest size it builds at: the counts
# without the top do not depend on it)
KERAS = {
    "Xception": ("specs/xception.yaml", {}, 71),
    "InceptionV3": ("specs/inception_v3_slim.yaml", {}, 75),
    "ResNet50": ("examples/resnet50.yaml", {}, 32),
    "VGG16": ("examples/vgg16.yaml", {}, 32),
    "MobileNet": ("examples/mobilenet_v1.yaml", {}, 32),
    "MobileNetV2": ("examples/mobilenet_v2.yaml", {}, 32),
    "MobileNetV3Small": ("examples/mobilenet_v3.yaml", {}, 32),
    "MobileNetV3Large": ("examples/mobilenet_v3.yaml", {"large": True}, 32),
    "DenseNet121": ("examples/densenet.yaml", {}, 32),
    "EfficientNetB0": ("examples/efficientnet.yaml", {}, 32),
    "ConvNeXtTiny": ("examples/convnext.yaml", {}, 32),
}


def counts(model) -> tuple[int, int]:
    return tuple(sum(int(np.prod(w.shape)) for w in ws) for ws in (model.trainable_weights, model.non_trainable_weights))


@pytest.mark.parametrize("family", KERAS)
def test_keras_without_the_top_counts_as_keras_applications(family, tmp_path):
    keras = pytest.importorskip("keras")
    spec, params, size = KERAS[family]
    analysis = load(ROOT / spec, params or None)  # the spec's size: Keras only builds the graph
    module = generated_module(porting_backends(["keras"])[0]["keras"], analysis, tmp_path)
    reference = getattr(keras.applications, family)(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
    model = module.create_model(**params)  # create_model(include_top=False, ...) is _backbone(model, ...)
    ours = module._backbone(model, include_top=False, pooling="avg")
    assert counts(ours) == counts(reference) and ours.output.shape == reference.output.shape
    assert counts(module._backbone(model, include_top=False)) == counts(reference)
    features = module._backbone(model, features_only=True)
    assert [tuple(o.shape[1:]) for o in features.outputs] == [t.shape for t in taps(analysis)]


def test_a_repeats_tap_is_its_last_run_whatever_the_count(tmp_path):
    """Xception's middle flow tap is the last run's output, at the count create_model gets."""
    pytest.importorskip("keras")
    analysis = load(ROOT / "specs/xception.yaml")
    module = generated_module(porting_backends(["keras"])[0]["keras"], analysis, tmp_path)
    features = module.create_model(features_only=True, out_indices=(3,), middle_repeats=2)
    assert features.outputs[0] is features.get_layer("middle_repeat_1_middle1_residual1").output
    assert module.create_model(include_top=False, pooling="max", middle_repeats=2).output.shape == (None, 2048)
    torch_features, _ = torch_module("specs/xception.yaml", {}, tmp_path)
    assert len(torch_features.create_model(features_only=True, middle_repeats=2)(torch.randn(1, 3, 71, 71))) == 5
