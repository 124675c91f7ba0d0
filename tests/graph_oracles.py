"""The outside references of the graph examples (issue 21), built with random weights
(no download) from torchvision and segmentation_models_pytorch: their parameter counts,
output shapes and multiply-adds, per output, for the input size an example uses.

Counts: trainable parameters; non-trainable = BN running mean and variance (torch's
num_batches_tracked is not a weight of the network, archc does not count it).
Multiply-adds: torch.utils.flop_counter's FLOPs / 2, per output summed over the modules
that output depends on (FlopCounterMode counts per module). Weights: the shapes of the
state_dict's tensors in its order (what a copy by structure walks). Everything runs on the meta
device: shapes and formulas only, no arithmetic.

``python tests/graph_oracles.py`` (with torchvision and smp installed, e.g. in
.venv-bench) prints the figures as JSON; tests/test_graph_examples.py holds the examples
to them. MODELS and named_outputs build the references on the CPU and run them:
tests/test_oracle_copy.py copies their weights into the generated torch models."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(b.numel() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return trainable, frozen


def _module_macs(model: torch.nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """Multiply-adds per module FQN (the counter's keys: 'Global', 'Model.layer1', ...)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}


def _hwc(t: torch.Tensor) -> list[int]:
    return [t.shape[2], t.shape[3], t.shape[1]]


def _sum(macs: dict[str, int], *prefixes: str) -> int:
    """The multiply-adds of the top-level modules whose names start a prefix (counter keys
    of depth 1 under the root, so nothing is counted twice)."""
    root = next(k for k in macs if k != "Global" and "." not in k)
    return sum(v for k, v in macs.items() if k.count(".") == 1 and k.split(".", 1)[1].startswith(prefixes) and k.startswith(root))


def deeplabv3_model() -> torch.nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)


def deeplabv3(size: int) -> dict:
    with torch.device("meta"):
        model = deeplabv3_model().eval()
        x = torch.empty(1, 3, size, size)
    out = {}
    macs = _module_macs(model, lambda: out.update(model(x)))
    return _figures(model, {"output": (_hwc(out["out"]), macs["Global"])})


def unet_resnet34_model() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet34", encoder_weights=None, classes=2)


def unet_resnet34(size: int) -> dict:
    with torch.device("meta"):
        model = unet_resnet34_model().eval()
        x = torch.empty(1, 3, size, size)
    out = []
    macs = _module_macs(model, lambda: out.append(model(x)))
    return _figures(model, {"output": (_hwc(out[0]), macs["Global"])})


def resnet50_fpn_model() -> torch.nn.Module:
    from torchvision.models import resnet50
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    class ResNetFPN(torch.nn.Module):  # torchvision's BackboneWithFPN, with trainable BN
        def __init__(self):
            super().__init__()
            layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
            self.body = IntermediateLayerGetter(resnet50(), return_layers=layers)
            self.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool())

        def forward(self, x):
            return self.fpn(self.body(x))

    return ResNetFPN()


FPN_NAMES = {"0": "p2", "1": "p3", "2": "p4", "3": "p5", "pool": "p6"}  # torchvision's keys -> the example's outputs


def resnet50_fpn(size: int) -> dict:
    with torch.device("meta"):
        model = resnet50_fpn_model().eval()
        x = torch.empty(1, 3, size, size)
    out = {}
    with FlopCounterMode(display=False) as counter:
        out.update(model(x))
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    body = per_module["ResNetFPN.body"]

    def level(i: int) -> int:  # P(i+2) reads the laterals of its level and every coarser one, and its own 3x3 conv
        inner = sum(per_module.get(f"ResNetFPN.fpn.inner_blocks.{j}", 0) for j in range(i, 4))
        return body + inner + per_module.get(f"ResNetFPN.fpn.layer_blocks.{i}", 0)

    outputs = {FPN_NAMES[k]: (_hwc(v), level(min(int(k) if k != "pool" else 3, 3))) for k, v in out.items()}
    assert (
        sum(per_module[f"ResNetFPN.fpn.{kind}_blocks.{i}"] for kind in ("inner", "layer") for i in range(4)) + body == per_module["Global"]
    )
    return _figures(model, outputs, total=per_module["Global"])


def inception_v3_aux_model() -> torch.nn.Module:
    from torchvision.models import inception_v3

    return inception_v3(weights=None, aux_logits=True, init_weights=False)


def inception_v3_aux(size: int) -> dict:
    with torch.device("meta"):
        model = inception_v3_aux_model().train()  # train(): the aux head runs
        x = torch.empty(2, 3, size, size)  # two samples: BN in training refuses one value per channel
    out = []
    macs = {name: n // 2 for name, n in _module_macs(model, lambda: out.append(model(x))).items()}
    logits, aux = out[0]
    total = macs["Global"]
    return _figures(
        model, {"logits": ([logits.shape[1]], total - macs["Inception3.AuxLogits"]), "aux": ([aux.shape[1]], _aux_macs(macs))}, total
    )


def _aux_macs(macs: dict[str, int]) -> int:
    """The aux head and every module before it (Conv2d_1a_3x3 ... Mixed_6e, torch's order)."""
    before = ("Conv2d_", "Mixed_5", "Mixed_6", "AuxLogits")
    return sum(v for k, v in macs.items() if k.count(".") == 1 and k.split(".")[1].startswith(before))


def _figures(model: torch.nn.Module, outputs: dict[str, tuple[list[int], int]], total: int | None = None) -> dict:
    trainable, frozen = counts(model)
    return {
        "trainable": trainable,
        "non_trainable": frozen,
        "weights": [list(t.shape) for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")],
        "outputs": {name: {"shape": shape, "macs": macs} for name, (shape, macs) in outputs.items()},
        "macs": total if total is not None else sum(m for _, m in outputs.values()),
    }


ORACLES = {"deeplabv3": deeplabv3, "unet_resnet34": unet_resnet34, "resnet50_fpn": resnet50_fpn, "inception_v3_aux": inception_v3_aux}

# -- the references run: built on the CPU with random weights, every output by the example's names

MODELS = {
    "deeplabv3": deeplabv3_model,
    "unet_resnet34": unet_resnet34_model,
    "resnet50_fpn": resnet50_fpn_model,
    "inception_v3_aux": inception_v3_aux_model,
}


def named_outputs(oracle: str, model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's outputs for ``x`` under the example's output names, in the
    example's order. Inception in eval mode returns its logits alone and skips the
    auxiliary head (torchvision runs it only in training), so the head is called here on
    Mixed_6e's output (archc's mixed7), in eval mode like the rest."""
    if oracle == "deeplabv3":
        return {"output": model(x)["out"]}
    if oracle == "unet_resnet34":
        return {"output": model(x)}
    if oracle == "resnet50_fpn":
        return {FPN_NAMES[k]: v for k, v in model(x).items()}
    seen = []
    hook = model.Mixed_6e.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return {"logits": logits, "aux": model.AuxLogits(seen[0])}


if __name__ == "__main__":
    sizes = dict(arg.split("=") for arg in sys.argv[1:])  # e.g. deeplabv3=512
    print(
        json.dumps(
            {name: oracle(int(sizes.get(name, 299 if name == "inception_v3_aux" else 512))) for name, oracle in ORACLES.items()}, indent=1
        )
    )
