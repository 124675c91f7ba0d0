"""archc's generated PyTorch models of the graph examples against their references (issue 21).

  deeplabv3      examples/deeplabv3.yaml      vs torchvision deeplabv3_resnet50(weights=None,
                                                 weights_backbone=None, aux_loss=False)
  unet_resnet34  examples/unet_resnet34.yaml  vs segmentation_models_pytorch
                                                 Unet("resnet34", encoder_weights=None, classes=2)

Both sides of a pair live in one process with the same weights (the reference's, copied
into the generated model by structure: archc's weights.network_order, as
tests/test_oracle_copy.py does) and the same input. After warm-up rounds they alternate,
A B A B ..., which spreads a loaded machine's slow phases over both alike: a training
step (zero_grad, forward, per-pixel cross-entropy, backward, SGD with momentum 0.9) and an
inference batch (eval mode, torch.inference_mode). Medians, interquartile ranges, and
generated / reference (the target: <= 1.00). The load average (`uptime`) before and after
and the CPU time other processes took during the run are printed: on a shared machine the
absolute times wander, the ratio of interleaved medians much less.

Runs in .venv-bench (torch 2.14.1 with torchvision and smp):

  .venv-bench/bin/python benchmarks/bench_graphs.py --json out/bench_graphs.json

--profile adds torch.profiler of one training step of each side and the ops whose self
time differs most.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    LoadMonitor,
    alternate,
    cpu_seconds,
    import_file,
    log,
    machine,
    median,
    op_differences,
    stopwatch,
    table,
    time_row,
    today,
    uptime,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # graph_oracles: the references, as the tests build them

MODELS = {"deeplabv3": "examples/deeplabv3.yaml", "unet_resnet34": "examples/unet_resnet34.yaml"}
REFERENCE = {
    "deeplabv3": "torchvision deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)",
    "unet_resnet34": 'segmentation_models_pytorch Unet("resnet34", encoder_weights=None, classes=2)',
}


class Side:
    """One model with its optimizer, input and per-pixel targets."""

    def __init__(self, module: torch.nn.Module, unwrap, classes: int, args: argparse.Namespace):
        self.module, self.unwrap = module, unwrap
        self.optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
        self.y = torch.randint(0, classes, (args.batch, args.size, args.size), generator=g)
        self.xi = torch.randn(args.infer_batch, 3, args.size, args.size, generator=g)

    def train_step(self) -> None:
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.unwrap(self.module(self.x)), self.y)
        loss.backward()
        self.optimizer.step()

    def infer_step(self) -> None:
        self.module.eval()
        with torch.inference_mode():
            self.unwrap(self.module(self.xi))

    def timed_train(self) -> float:
        return self.clock(self.train_step)

    def timed_infer(self) -> float:
        return self.clock(self.infer_step)

    @staticmethod
    def clock(step) -> float:
        return stopwatch(step)


def build_pair(model: str, out_dir: str, given: str | None = None) -> tuple[dict[str, Side], dict]:
    """The generated model (archc build of the example, or ``given``: an edited copy of
    its code) and the reference, same weights."""
    import graph_oracles

    from archc.api import build, load
    from archc.backends.torch_backend.weights import network_order

    spec = ROOT / MODELS[model]
    analysis = load(spec)
    (path,) = [given] if given else build(spec, ["torch"], out_dir)
    torch.manual_seed(0)
    reference = graph_oracles.MODELS[model]()
    generated = import_file(path).create_model()
    source = [t for k, t in reference.state_dict().items() if not k.endswith("num_batches_tracked")]
    target = network_order(generated, analysis)
    assert len(source) == len(target), (len(source), len(target))
    with torch.no_grad():
        for (key, t), s in zip(target, source, strict=True):
            assert t.shape == s.shape, key
            t.copy_(s)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in (("generated", generated), ("reference", reference))}
    assert counts["generated"] == counts["reference"] == analysis.total.trainable, counts
    return {"generated": generated, "reference": reference}, {"path": str(path), "trainable": analysis.total.trainable}


def profile(sides: dict[str, Side], model: str, rows: int) -> None:
    """torch.profiler of one training step of each side; the ops whose self time differs most."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    totals = {}
    for name, side in sides.items():
        side.train_step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            side.train_step()
        totals[name] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}
    print(f"\n{model}: ops whose self CPU time differs most in one training step (generated - reference)\n")
    print(op_differences(totals, rows))


def run_model(model: str, args: argparse.Namespace, out_dir: str) -> dict:
    modules, info = build_pair(model, out_dir, args.generated.get(model))
    classes = 21 if model == "deeplabv3" else 2
    unwrap = {"generated": lambda y: y, "reference": (lambda y: y["out"]) if model == "deeplabv3" else (lambda y: y)}
    sides = {name: Side(m, unwrap[name], classes, args) for name, m in modules.items()}
    if args.clock == "cpu":
        for side in sides.values():
            side.clock = cpu_seconds
    how = "given with --generated" if model in args.generated else f"archc build {MODELS[model]} --backend torch"
    print(f"\n## {model}\n\ngenerated: {info['path']} ({how})")
    print(f"reference: {REFERENCE[model]}\ntrainable parameters: {info['trainable']:,} each; the reference's weights in both")
    result: dict = {"model": model, "uptime_before": uptime()}
    with LoadMonitor() as load:
        for phase, reps in (("train", args.reps), ("infer", args.infer_reps)):
            log(f"{model}: {phase}, {args.warmup} warm-up + {reps} alternating rounds")
            runs = {name: getattr(side, f"timed_{phase}") for name, side in sides.items()}
            result[phase] = alternate(runs, args.warmup, reps, log if args.verbose else None)
    result["uptime_after"], result["background_load"] = uptime(), load.fraction
    rows = []
    for phase, batch in (("train", args.batch), ("infer", args.infer_batch)):
        what = "training step" if phase == "train" else "inference batch"
        rows.append(time_row(f"{what}, batch {batch} (s)", result[phase]["generated"], result[phase]["reference"]))
        result[f"{phase}_ratio"] = median(result[phase]["generated"]) / median(result[phase]["reference"])
    print(
        f"\n{model}: medians of {args.reps} training / {args.infer_reps} inference alternating rounds, {args.size}x{args.size}, "
        f"{args.clock} clock seconds"
    )
    print(f"before: {result['uptime_before']}; after: {result['uptime_after']}; {load.describe()}\n")
    print(table(["", "generated", "IQR", "reference", "IQR", "gen/ref", "target"], rows))
    if args.profile:
        profile(sides, model, args.profile_rows)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--size", type=int, default=256, help="image height and width (default 256)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default 2: BN in training needs 2 values per channel)")
    parser.add_argument("--infer-batch", type=int, default=2, help="inference batch (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed alternating rounds first (default 2)")
    parser.add_argument("--reps", type=int, default=15, help="timed alternating training rounds (default 15)")
    parser.add_argument("--infer-reps", type=int, default=15, help="timed alternating inference rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall-clock seconds, or this process's CPU seconds")
    parser.add_argument("--profile", action="store_true", help="profile one training step of each side")
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument(
        "--generated",
        nargs="*",
        default=[],
        metavar="MODEL=FILE",
        help="time an edited copy of the generated code instead (to try a renderer change before making it)",
    )
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed run")
    args = parser.parse_args(argv)
    args.generated = dict(item.split("=", 1) for item in args.generated)
    torch.set_num_threads(args.threads)
    print(f"# bench_graphs, {today()}\n\n{machine()}; torch {torch.__version__}, {args.threads} threads, fp32, NCHW")
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for model in args.models:
            results[model] = run_model(model, args, out_dir)
    write_json(args.json, {"args": vars(args), "machine": machine(), "date": today(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
