"""archc's generated PyTorch models against hand-written references of the same architecture.

For xception and inception_v3_slim: the model that `archc build SPEC --backend torch`
generates, and the reference

  xception           timm.create_model("legacy_xception")   (22,855,952 parameters, the same Xception)
  inception_v3_slim  torchvision.models.inception_v3(aux_logits=False, init_weights=False)
                     (the slim layout; its batch norms also have a scale, +17,216 parameters)

Measured, with the two models alternating (A B A B ...) after warm-up rounds, medians:
a training step (forward, cross-entropy, backward, SGD with momentum 0.9), inference
throughput (eval mode, torch.inference_mode), and peak memory of a training step and
of an inference batch, in fresh child processes per model (CPU: the peak RSS of the
steps over the RSS before them, and the peak of glibc malloc's bytes in use; CUDA:
torch.cuda.max_memory_allocated over the memory allocated before them). Ratios are
generated / reference: below 1 the generated model is faster or smaller.

Environment: timm and torchvision need torch 2.14.1 and torchvision 0.29.1, which do
not belong in the project's environment (torch 2.13.0 CPU), so both sides run in a
separate virtual environment, with the same torch:

  python3 -m venv .venv-bench
  .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
  .venv-bench/bin/pip install -e .
  .venv-bench/bin/python benchmarks/bench_torch.py

GPU: --device cuda --amp bf16 --channels-last; --peak-tflops (the GPU's dense bf16
peak, e.g. 989 for an H100 SXM) adds the fraction of it reached, counting model FLOPs
as 2 x archc's multiply-adds per image (x 3 for a training step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    MEMORY_METHOD,
    LoadMonitor,
    alternate,
    archc_counts,
    build_generated,
    child_result,
    import_file,
    log,
    machine,
    measure_step_memory,
    median,
    memory_pairs,
    memory_rows,
    op_differences,
    run_child,
    stopwatch,
    table,
    time_row,
    today,
    wait_idle,
    write_json,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

MODELS = ("xception", "inception_v3_slim")
REFERENCE = {
    "xception": 'timm.create_model("legacy_xception", pretrained=False)',
    "inception_v3_slim": "torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)",
}
# What differs between the two sides of a pair although the architecture is the same.
NOTES = {
    "xception": [
        "timm's legacy_xception pads its 3x3 convs and 3x3/2 max pools symmetrically (padding=1); the generated model "
        "follows Keras/TF 'same', which is symmetric everywhere but in the max pool of the second entry module "
        "(74x74 -> 37x37: 0 before, 1 after); same output shapes, same multiply-adds",
        "timm uses ReLU(inplace=True) (but the first of each block) and an in-place residual add (x += skip)",
        "batch-norm epsilon: timm 1e-5, generated 1e-3 (Keras's); no cost difference",
    ],
    "inception_v3_slim": [
        "torchvision's batch norms have a scale (gamma): +17,216 trainable parameters and one more multiply per "
        "activation in BN; the slim layout (generated) has beta only",
        "torchvision's 3x3 average pools count the zero padding (count_include_pad=True); Keras's, and the generated "
        "model's, do not (count_include_pad=False)",
        "torchvision uses ReLU(inplace=True) and applies dropout 0.5 before the classifier in training; the spec's dropout is 0.0",
    ],
}
INVENTORY_OPS = (
    "convolution",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "relu",
    "relu_",
    "add",
    "add_",
    "constant_pad_nd",
    "max_pool2d_with_indices",
    "avg_pool2d",
    "cat",
    "clone",
    "copy_",
    "native_dropout",
    "mean",
)


# -- models --------------------------------------------------------------------------------


def reference_model(model: str) -> nn.Module:
    if model == "xception":
        import timm

        return timm.create_model("legacy_xception", pretrained=False)
    import torchvision

    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)


def make_model(model: str, impl: str, generated_file: str | None) -> nn.Module:
    if impl == "generated":
        return import_file(generated_file).create_model()
    return reference_model(model)


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops a piece of code dispatches (each once, after decompositions)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def forward_flops(module: nn.Module, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    training = module.training
    module.eval()  # batch norm in training mode refuses one image at 1x1
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        module(torch.randn(1, 3, size, size))
    module.train(training)
    return flops.get_total_flops()


def inventory(module: nn.Module, size: int) -> tuple[Counter[str], int, tuple[int, ...]]:
    """(aten op counts of one forward + backward, forward FLOPs, output shape) at batch 1 on CPU."""
    module.train()
    x = torch.randn(1, 3, size, size)
    counter = OpCounter()
    with counter:
        out = module(x)
        out.float().sum().backward()
    module.zero_grad(set_to_none=True)
    return counter.counts, forward_flops(module, size), tuple(out.shape)


# -- steps ---------------------------------------------------------------------------------


class Bench:
    """One model on the device with its input, optimizer and timed steps."""

    def __init__(self, module: nn.Module, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.module = module.to(self.device)
        self.channels_last = args.channels_last
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.amp = args.amp == "bf16"
        self.batch, self.infer_batch, self.size = args.batch, args.infer_batch, args.size
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=1e-3, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        self.x = self._input(self.batch, generator)
        self.y = torch.randint(0, 1000, (self.batch,), generator=generator).to(self.device)
        self.xi = self._input(self.infer_batch, generator)

    def _input(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn(batch, 3, self.size, self.size, generator=generator).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self) -> None:
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.module(self.x)
        loss = F.cross_entropy(out.float(), self.y)
        loss.backward()
        self.optimizer.step()

    def infer_step(self) -> None:
        self.module.eval()
        with torch.inference_mode(), self.autocast():
            self.module(self.xi)

    def timed_train(self) -> float:
        return stopwatch(self.train_step, self.sync)

    def timed_infer(self) -> float:
        return stopwatch(self.infer_step, self.sync)


# -- the memory child ----------------------------------------------------------------------


def memory_child(cfg: dict) -> None:
    """In a fresh process: build one model, make its input, run one step on a batch of two
    images (this loads the kernels' code and, for training, makes the optimizer's momentum
    buffers), then run the measured steps and report the peak memory they add."""
    import timm  # noqa: F401  both sides import the references' packages: the same heap before the steps
    import torchvision  # noqa: F401

    torch.set_num_threads(cfg["threads"])
    args = argparse.Namespace(**cfg["args"])
    bench = Bench(make_model(cfg["model"], cfg["impl"], cfg["generated_file"]), args)
    step = bench.train_step if cfg["mode"] == "train" else bench.infer_step
    full = bench.x, bench.y, bench.xi
    bench.x, bench.y, bench.xi = bench.x[:2], bench.y[:2], bench.xi[:2]
    step()
    bench.x, bench.y, bench.xi = full
    if bench.device.type != "cuda":
        child_result(measure_step_memory(step, cfg["steps"]))
        return
    bench.sync()
    torch.cuda.reset_peak_memory_stats(bench.device)
    before = torch.cuda.memory_allocated(bench.device)
    for _ in range(cfg["steps"]):
        step()
    bench.sync()
    peak = torch.cuda.max_memory_allocated(bench.device)
    child_result({"growth_mib": (peak - before) / 2**20, "peak_mib": peak / 2**20, "malloc_growth_mib": None})


def measure_memory(model: str, generated_file: str, args: argparse.Namespace) -> dict:
    def measure(impl: str, mode: str) -> dict:
        cfg = {
            "model": model,
            "impl": impl,
            "generated_file": generated_file,
            "mode": mode,
            "threads": args.threads,
            "steps": args.memory_steps,
            "args": {k: getattr(args, k) for k in ("device", "channels_last", "amp", "batch", "infer_batch", "size")},
        }
        return run_child([sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(cfg)])

    return memory_pairs(measure, args.memory_reps, log)


# -- profiling -----------------------------------------------------------------------------


def profile(benches: dict[str, Bench], model: str, args: argparse.Namespace) -> None:
    """torch.profiler of one training step of each side: the top ops by self time, and
    the ops whose self time differs most between the two."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    totals: dict[str, dict[str, tuple[float, int]]] = {}
    for impl, bench in benches.items():
        bench.train_step()  # warm
        bench.sync()
        with torch_profile(activities=activities, record_shapes=False) as prof:
            bench.train_step()
            bench.sync()
        if args.profile_dir:
            Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
            trace = Path(args.profile_dir) / f"{model}_{impl}_train.json"
            prof.export_chrome_trace(str(trace))
            print(f"wrote {trace}")
        averages = prof.key_averages()
        totals[impl] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in averages}
        print(f"\n{model} {impl}: one training step, top ops by self CPU time")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    print(f"\n{model}: ops whose self CPU time differs most (generated - reference), one training step")
    print(op_differences(totals, args.profile_rows))


# -- main ----------------------------------------------------------------------------------


def run_model(model: str, args: argparse.Namespace, out_dir: str) -> dict:
    counts = archc_counts(model)
    generated_file = args.generated.get(model) or str(build_generated(model, "torch", out_dir))
    print(f"\n## {model}\n")
    built = f"archc build specs/{model}.yaml --backend torch" if model not in args.generated else "given with --generated"
    print(f"generated: {generated_file} ({built})")
    print(f"reference: {REFERENCE[model]}")
    modules = {"generated": make_model(model, "generated", generated_file), "reference": reference_model(model)}

    spec_size = counts["input"][0]
    inv = {impl: inventory(m, spec_size) for impl, m in modules.items()}
    print(
        f"trainable parameters: generated {trainable(modules['generated']):,}, reference {trainable(modules['reference']):,} "
        f"(archc: {counts['trainable']:,}); output {inv['generated'][2]} vs {inv['reference'][2]}"
    )
    print(
        f"forward FLOPs per {spec_size}x{spec_size} image (torch FlopCounterMode): generated {inv['generated'][1] / 1e9:.3f} G, "
        f"reference {inv['reference'][1] / 1e9:.3f} G; archc: 2 x {counts['macs']:,} multiply-adds = {2 * counts['macs'] / 1e9:.3f} G"
    )
    if args.size != spec_size:  # archc counts the spec's input size; scale by torch's count at the benchmarked size
        counts["macs"] = round(counts["macs"] * forward_flops(modules["generated"], args.size) / inv["generated"][1])
        print(f"at {args.size}x{args.size}: {counts['macs']:,} multiply-adds per image (archc's count scaled by FlopCounterMode's)")
    ops = [op for op in INVENTORY_OPS if inv["generated"][0][op] or inv["reference"][0][op]]
    print("\naten ops of one forward + backward (batch 1, train mode):\n")
    print(table(["op", "generated", "reference"], [(op, inv["generated"][0][op], inv["reference"][0][op]) for op in ops]))
    print("\nlike with like:")
    for note in NOTES[model]:
        print(f"- {note}")

    torch.manual_seed(0)
    benches = {impl: Bench(m, args) for impl, m in modules.items()}
    result: dict = {"model": model, "generated_file": generated_file, "reference": REFERENCE[model], "counts": counts}
    with LoadMonitor() as load:
        if "train" in args.phases:
            log(f"{model}: training steps, batch {args.batch}")
            result["train"] = alternate(
                {k: b.timed_train for k, b in benches.items()}, args.warmup, args.reps, log if args.verbose else None
            )
        if "infer" in args.phases:
            log(f"{model}: inference, batch {args.infer_batch}")
            result["infer"] = alternate(
                {k: b.timed_infer for k, b in benches.items()}, args.warmup, args.infer_reps, log if args.verbose else None
            )
    result["background_load"] = load.fraction
    if args.profile:
        profile(benches, model, args)
    del benches, modules
    if "memory" in args.phases:
        log(f"{model}: peak memory")
        result["memory"] = measure_memory(model, generated_file, args)
    report(result, args, load)
    return result


def report(result: dict, args: argparse.Namespace, load: LoadMonitor) -> None:
    macs = result["counts"]["macs"]
    rows = []
    for phase, batch, flops_per_image in (("train", args.batch, 6 * macs), ("infer", args.infer_batch, 2 * macs)):
        if phase not in result:
            continue
        g, r = median(result[phase]["generated"]), median(result[phase]["reference"])
        label = "training step" if phase == "train" else "inference batch"
        tflops = flops_per_image * batch / g / 1e12
        peak = f", {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:g} TFLOP/s peak" if args.peak_tflops else ""
        rows.append(time_row(f"{label}, batch {batch} (s)", result[phase]["generated"], result[phase]["reference"]))
        rows.append(
            (
                f"  images/s ({phase})",
                f"{batch / g:.1f}",
                f"{tflops:.3f} TFLOP/s{peak}",
                f"{batch / r:.1f}",
                "",
                "",
                "",
            )
        )
    if "memory" in result:
        rows += memory_rows(result["memory"], "CUDA memory allocated added" if args.device.startswith("cuda") else "RSS added")
    print(
        f"\n{result['model']}: medians of {args.reps} training / {args.infer_reps} inference alternating runs after {args.warmup} warm-up rounds"
    )
    print(load.describe())
    print("MISSED (noise): over the target, but the two sides' spreads (interquartile ranges; min-max under 4 runs) overlap\n")
    print(table(["", "generated", "spread (IQR) / rate", "reference", "spread (IQR)", "gen/ref", "target"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch", type=int, default=8, help="training batch (default 8)")
    parser.add_argument("--infer-batch", type=int, default=8, help="inference batch (default 8)")
    parser.add_argument("--size", type=int, default=299, help="image height and width (default 299)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed alternating rounds first (default 2)")
    parser.add_argument("--reps", type=int, default=7, help="timed alternating rounds of training steps (default 7)")
    parser.add_argument("--infer-reps", type=int, default=10, help="timed alternating rounds of inference (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast to bfloat16 (default none: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and input")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s for the chosen precision")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=("train", "infer", "memory"),
        default=["train", "infer", "memory"],
        help="what to measure (default all)",
    )
    parser.add_argument("--memory-steps", type=int, default=2, help="steps each memory child runs (default 2)")
    parser.add_argument("--memory-reps", type=int, default=3, help="memory children per model and mode, alternating; medians (default 3)")
    parser.add_argument("--profile", action="store_true", help="also torch.profiler one training step of each side")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--profile-dir", default=None, help="write Chrome traces of the profiled steps here")
    parser.add_argument(
        "--wait-idle", type=float, default=0, metavar="SECONDS", help="first wait up to this long for other processes to go quiet"
    )
    parser.add_argument(
        "--generated",
        metavar="MODEL=FILE",
        action="append",
        default=[],
        help="benchmark this file instead of building the spec: to try a change to the generated code before changing the templates",
    )
    parser.add_argument("--out-dir", default=None, help="where the generated code goes (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the raw times and results to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed run on stderr")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.generated = dict(item.split("=", 1) for item in args.generated)
    except ValueError:
        parser.error("--generated: expected MODEL=FILE")
    if set(args.generated) - set(MODELS):
        parser.error(f"--generated: expected a model of {', '.join(MODELS)}")
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return 0

    torch.set_num_threads(args.threads)
    if args.wait_idle:
        print(wait_idle(args.wait_idle))
    precision = "bf16 autocast" if args.amp == "bf16" else "fp32"
    layout = "channels_last" if args.channels_last else "NCHW contiguous"
    print("# archc generated PyTorch models vs references\n")
    print(f"date: {today()}")
    print(f"machine: {machine()}")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"torch {torch.__version__}; device {args.device}; {args.threads} threads; {precision}; {layout}")
    print(
        f"training: batch {args.batch}, {args.size}x{args.size}, cross-entropy + SGD(momentum 0.9); inference: batch "
        f"{args.infer_batch}, eval mode, torch.inference_mode"
    )
    print("timing: generated and reference alternate (A B A B ...) in one process after the warm-up rounds; medians")
    print(
        f"peak memory: {args.memory_reps} fresh child processes per model and mode (alternating) each build the model and "
        f"its input, run a step on two images (loads the kernels' code, makes the momentum buffers), then run "
        f"{args.memory_steps} steps; reported, medians: {MEMORY_METHOD} (CUDA: max_memory_allocated minus memory_allocated)"
    )
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="archc-bench-")
    results = [run_model(model, args, out_dir) for model in args.models]
    write_json(args.json, {"date": today(), "machine": machine(), "torch": torch.__version__, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
