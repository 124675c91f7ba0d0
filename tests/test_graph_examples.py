"""The graph examples of issue 21 against their outside references: the IR's counts,
per-output shapes and multiply-adds equal torchvision's and segmentation_models_pytorch's
models (typed in below from tests/graph_oracles.py, which builds the references with
random weights); where those libraries are importable (.venv-bench), the oracle is run
and must agree at the default input size and at another one. The backends do not build
these examples yet (tests/bundled.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from archc.api import load
from archc.passes.instances import roles, weighted

ROOT = Path(__file__).resolve().parents[1]

# example -> (spec, params, oracle, trainable, non-trainable, {output: (shape, multiply-adds)})
REFERENCES = {
    "deeplabv3": (
        "examples/deeplabv3.yaml", {}, "deeplabv3", 39_638_869, 56_704,
        {"output": ((512, 512, 21), 163_579_428_864)},
    ),
    "unet_resnet34": (
        "examples/unet_resnet34.yaml", {}, "unet_resnet34", 24_436_514, 19_008,
        {"output": ((512, 512, 2), 31_293_702_144)},
    ),
    "resnet50_fpn": (
        "examples/resnet50_fpn.yaml", {}, "resnet50_fpn", 26_852_416, 53_120,
        {
            "p2": ((128, 128, 256), 33_030_144_000),
            "p3": ((64, 64, 256), 24_708_644_864),
            "p4": ((32, 32, 256), 22_359_834_624),
            "p5": ((16, 16, 256), 21_638_414_336),
            "p6": ((8, 8, 256), 21_638_414_336),
        },
    ),
    "inception_v3_aux": (
        "specs/inception_v3_slim.yaml", {"aux_logits": True, "torch_layout": True}, "inception_v3_aux", 27_161_264, 36_224,
        {"logits": ((1000,), 5_713_216_096), "aux": ((1000,), 4_714_912_352)},
    ),
}  # fmt: skip
TOTAL_MACS = {"resnet50_fpn": 36_201_037_824, "inception_v3_aux": 5_718_899_296}  # shared layers once; one output: its own
OTHER_SIZE = {"inception_v3_aux": 331}  # the aux head's 5x5 conv needs a 17x17 grid of at least 17 - 2


@pytest.mark.parametrize("example", REFERENCES)
def test_the_ir_gives_the_references_counts_shapes_and_macs(example):
    path, params, _, trainable, non_trainable, outputs = REFERENCES[example]
    a = load(ROOT / path, params)
    assert (a.total.trainable, a.total.non_trainable) == (trainable, non_trainable)
    assert {name: (shape, c.macs) for (name, shape), c in zip(a.outputs.items(), a.output_counts.values())} == outputs
    assert a.total.macs == TOTAL_MACS.get(example, next(iter(outputs.values()))[1])


def test_deeplab_and_fpn_share_the_torch_resnet_blocks():
    """Written once in each spec (a spec cannot import another's blocks): the same text,
    so that a fix to one is a fix to both."""
    import yaml

    blocks = [yaml.safe_load((ROOT / f"examples/{name}.yaml").read_text())["blocks"] for name in ("deeplabv3", "resnet50_fpn")]
    assert [{k: b[k] for k in ("bottleneck", "stage")} for b in blocks] == [{k: blocks[0][k] for k in ("bottleneck", "stage")}] * 2


def test_every_graph_example_is_held_to_a_reference():
    """Every bundled example that reads named tensors has an outside reference here (or,
    for NASNet, keras.applications in tests/test_nasnet.py)."""
    graphs = {p.stem for p in (ROOT / "examples").glob("*.yaml") if any(n.reads or n.sizes_from() for n in walk_all(load(p)))}
    assert graphs == {"deeplabv3", "unet_resnet34", "resnet50_fpn", "nasnet"}
    assert graphs - {"nasnet"} <= {Path(spec).stem for spec, *_ in REFERENCES.values()}


def walk_all(analysis):
    from archc.ir.ops import walk

    return [n for nodes in analysis.net.flows.values() for n in walk(nodes)]


def _oracle(name: str):
    for module in ("torchvision", "segmentation_models_pytorch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed here (the oracle runs in .venv-bench)")
    import graph_oracles

    return graph_oracles.ORACLES[name]


@pytest.mark.parametrize("resized", [False, True], ids=["default_size", "other_size"])
@pytest.mark.parametrize("example", REFERENCES)
def test_the_reference_agrees(example, resized):
    """Counts, every output's shape and multiply-adds (torch.utils.flop_counter / 2) of
    the reference built now, at the spec's input size and at another one."""
    path, params, oracle, *_ = REFERENCES[example]
    size = OTHER_SIZE.get(example, 256)
    a = load(ROOT / path, params, (size, size) if resized else None)
    ref = _oracle(oracle)(a.net.input[0])
    assert (a.total.trainable, a.total.non_trainable) == (ref["trainable"], ref["non_trainable"])
    assert list(a.outputs) == list(ref["outputs"])
    for (name, shape), counts in zip(a.outputs.items(), a.output_counts.values()):
        assert (list(shape), counts.macs) == (ref["outputs"][name]["shape"], ref["outputs"][name]["macs"]), name
    assert a.total.macs == ref["macs"]


def _torch_weight_shapes(analysis) -> list[list[int]]:
    """The IR's weights in network order, each role's shape in torch's layout (conv
    kernels (out, in, kh, kw), dense kernels (out, in)); BN gamma, beta, mean, variance
    are torch's weight, bias, running_mean, running_var in that order."""
    shapes = []
    for instance in weighted(analysis):
        for shape in roles(instance).values():
            shapes.append([shape[3], shape[2], shape[0], shape[1]] if len(shape) == 4 else list(shape[::-1]))
    return shapes


@pytest.mark.parametrize("example", REFERENCES)
def test_the_weights_line_up_with_the_references_state_dict(example):
    """Layer for layer in torch's order: the IR's weights, walked in network order, have
    the shapes of the reference's state_dict in its order (what a copy by structure needs)."""
    path, params, oracle, *_ = REFERENCES[example]
    a = load(ROOT / path, params)
    assert _torch_weight_shapes(a) == _oracle(oracle)(a.net.input[0])["weights"]
