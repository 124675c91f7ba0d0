"""Feature taps (archc.passes.taps): the last feature map at each reduction, from the IR's
shapes. The expected channels are timm 1.0's ``features_only`` ``feature_info`` for the
same architecture (measured with the bench venv's timm; the commands are in
docs/reuse.md); where a bundled spec's layout differs from timm's, the test says how."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from archc.api import load
from archc.cli import main
from archc.passes.taps import reduction, taps

ROOT = Path(__file__).parents[1]

# spec, params, timm model, timm's channels; reductions 2..32 unless said
TIMM = [
    ("specs/xception.yaml", {}, "legacy_xception", [64, 128, 256, 728, 2048]),
    ("specs/inception_v3_slim.yaml", {}, "inception_v3", [64, 192, 288, 768, 2048]),
    ("examples/resnet50.yaml", {}, "resnet50", [64, 256, 512, 1024, 2048]),
    ("examples/densenet.yaml", {}, "densenet121", [64, 256, 512, 1024, 1024]),
    ("examples/mobilenet_v3.yaml", {"large": True}, "mobilenetv3_large_100", [16, 24, 40, 112, 960]),
    ("examples/mobilenet_v3.yaml", {}, "mobilenetv3_small_100", [16, 16, 24, 48, 576]),
]


@pytest.mark.parametrize("spec, params, model, channels", TIMM, ids=[t[2] for t in TIMM])
def test_taps_are_timms_feature_info(spec, params, model, channels):
    found = taps(load(ROOT / spec, params or None))
    assert [t.channels for t in found] == channels
    assert [t.reduction for t in found] == [2, 4, 8, 16, 32]


def test_convnext_taps_start_at_four():
    found = taps(load(ROOT / "examples/convnext.yaml"))
    assert [(t.channels, t.reduction) for t in found] == [(96, 4), (192, 8), (384, 16), (768, 32)]
    assert [t.module for t in found] == [f"stages/stage{i}" for i in range(1, 5)]


@pytest.mark.parametrize(
    "spec, params, channels",
    [
        # timm's EfficientNet and MobileNetV2 tap the last block of each stage (320) and leave
        # conv_head, the 1x1 conv to 1280 before the pool, to the head; the spec's last map at
        # reduction 32 is that conv's (keras.applications' top_conv, in the spec's head flow)
        ("examples/efficientnet.yaml", {}, [16, 24, 40, 112, 1280]),
        ("examples/mobilenet_v2.yaml", {}, [16, 24, 32, 96, 1280]),
        # the August 2016 Keras layout: 32 pool-branch filters in all three 35x35 modules;
        # TF-slim's (timm's, inception_v3_slim's) Mixed_5c/5d have 64, so 288
        ("specs/inception_v3.yaml", {}, [64, 192, 256, 768, 2048]),
    ],
)
def test_taps_where_the_layout_is_not_timms(spec, params, channels):
    assert [t.channels for t in taps(load(ROOT / spec, params or None))] == channels


def test_a_tap_is_a_module_output_and_not_a_pad_or_a_squeeze():
    """DenseNet: the map before the zero pad of its max pool (timm's norm0), and the dense
    block before the transition (BN, relu, conv, pool: one module); MobileNetV3: the 1x1
    squeeze of a squeeze-and-excite gate is a side path, and the pool ends the features."""
    dense = taps(load(ROOT / "examples/densenet.yaml"))
    assert [t.module for t in dense] == ["stem/act1", "features/block1", "features/block2", "features/block3", "features/act1"]
    assert dense[0].shape == (112, 112, 64)
    small = taps(load(ROOT / "examples/mobilenet_v3.yaml"))
    assert all(t.shape[0] > 1 for t in small) and small[-1].module.endswith("last_conv1/act1")


def test_a_module_spanning_several_reductions_is_looked_into(tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text(
        "name: one\ninput: [64, 64, 3]\n"
        "blocks:\n  all:\n    body:\n"
        "      - conv: {filters: 8, kernel: 3, stride: 2, padding: same}\n"
        "      - conv: {filters: 16, kernel: 3, stride: 2, padding: same}\n"
        "      - conv: {filters: 24, kernel: 3, padding: same}\n"
        "flows:\n  body: [rescale: {scale: 0.5}, all, global_avg_pool, dense: {units: 2}]\n"
    )
    found = taps(load(spec))
    assert [(t.reduction, t.channels, t.shape[:2]) for t in found] == [(2, 8, (32, 32)), (4, 24, (16, 16))]
    assert found[0].module == "body/all1/conv1" and found[1].module == "body/all1"


def test_reductions_are_nominal_at_odd_and_small_sizes():
    assert [reduction(299, h) for h in (147, 71, 35, 17, 8)] == [2, 4, 8, 16, 32]
    assert [reduction(299, h) for h in (150, 75, 38, 19, 10)] == [2, 4, 8, 16, 32]
    small = taps(load(ROOT / "specs/xception.yaml", None, input_size=(71, 71)))
    assert [t.channels for t in small] == [64, 128, 256, 728, 2048]


def test_params_lists_the_taps():
    runner = CliRunner()
    table = runner.invoke(main, ["params", str(ROOT / "examples/resnet50.yaml")]).output
    assert "feature taps" in table and "stages/stage4" in table and "7x7x2048" in table
    data = json.loads(runner.invoke(main, ["params", str(ROOT / "examples/resnet50.yaml"), "--json"]).output)
    assert data["taps"][0] == {"reduction": 2, "module": "stem/act1", "shape": [112, 112, 64], "channels": 64}
    assert [t["reduction"] for t in data["taps"]] == [2, 4, 8, 16, 32]
