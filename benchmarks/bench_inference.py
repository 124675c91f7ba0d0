"""Inference: archc's generated PyTorch models made for inference (the generated
module's ``for_inference``) against the hand-written references (timm's legacy_xception,
torchvision's inception_v3).

Five models per architecture live in one process and alternate, A B C D E A B ..., after
warm-up rounds, all given the same NCHW input batch:

  reference       the reference as its library builds it (NCHW weights)
  reference CL    the reference with channels_last weights (``.to(memory_format=...)``)
  generated       the generated model as built
  folded          ``for_inference(model, memory_format=torch.contiguous_format)``: batch
                  norms folded and pools swapped (from the spec's tables), NCHW weights
  inference       ``for_inference(model)``: the same with channels_last weights, the default

Inference is eval mode under ``torch.inference_mode``; medians, with the interquartile
range. The target (<= 0.90) is on inference / reference: each model as its maker ships it,
as the issue measured "parity" (generated / reference). Two like-for-like ratios say how
much of the gain is the layout and how much the rewrites: folded / reference (both NCHW:
the rewrites alone) and inference / best reference (against the faster of the
reference's two layouts, channels_last on this CPU: the rewrites, given the same layout).

Runs from the generated .py files alone (``generated/<model>_torch.py`` by default, or
``--generated MODEL=FILE``): it needs torch, timm and torchvision, not archc, so that it
also runs on a GPU machine without pydantic:

  .venv-bench/bin/python benchmarks/bench_inference.py --wait-idle 300            # CPU, batch 1 and 8
  python3 benchmarks/bench_inference.py --device cuda --amp bf16 --batches 1 8 64

The rewritten models' outputs are compared with the generated one's on the same input
before timing (max relative difference printed; on CPU in fp32 the run stops above 1e-4).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from common import (
    LoadMonitor,
    alternate,
    import_file,
    log,
    machine,
    median,
    spread,
    stopwatch,
    table,
    today,
    verdict,
    wait_idle,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("xception", "inception_v3_slim")
TARGET = 0.90
REFERENCE = {
    "xception": 'timm.create_model("legacy_xception", pretrained=False)',
    "inception_v3_slim": "torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)",
}


def reference_model(model: str) -> torch.nn.Module:
    if model == "xception":
        import timm

        return timm.create_model("legacy_xception", pretrained=False)
    import torchvision

    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)


def randomise_batch_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine terms that are not 0 and 1, so that a fold that got
    one of them wrong would change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


class Runner:
    """One model on the device, timed on one input batch."""

    def __init__(self, module: torch.nn.Module, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.module = module.to(self.device).eval()
        self.amp = args.amp == "bf16"
        self.x: torch.Tensor | None = None

    def use(self, x: torch.Tensor) -> None:
        self.x = x.to(self.device)

    def forward(self) -> torch.Tensor:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return self.module(self.x)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self) -> float:
        return stopwatch(self.forward, self.sync)


def run_model(model: str, path: Path, args: argparse.Namespace) -> dict:
    module = import_file(path)
    torch.manual_seed(0)
    generated = module.create_model()
    randomise_batch_norms(generated)
    folded = module.for_inference(_copy_into(module, generated), memory_format=torch.contiguous_format)
    inference = module.for_inference(_copy_into(module, generated))
    reference = reference_model(model)
    reference_cl = reference_model(model).to(memory_format=torch.channels_last)
    models = {"reference": reference, "reference CL": reference_cl, "generated": generated, "folded": folded, "inference": inference}
    runners = {name: Runner(m, args) for name, m in models.items()}

    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    for r in runners.values():
        r.use(x)
    a = runners["generated"].forward().float()
    differences = {}
    for name in ("folded", "inference"):
        b = runners[name].forward().float()
        differences[name] = difference = ((a - b).abs().max() / a.abs().max()).item()
        log(f"{model}: {name} vs generated outputs: max relative difference {difference:.2e}")
        if args.device == "cpu" and args.amp == "none" and not difference <= 1e-4:  # (CUDA convs may use TF32)
            raise SystemExit(f"{model}: the {name} model's outputs differ from the generated one's by {difference:.2e} relative")

    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        for r in runners.values():
            r.use(x)
        log(f"{model}, batch {batch}: {args.warmup} warm-up and {args.reps} timed rounds, alternating")
        times = alternate({name: r.timed for name, r in runners.items()}, args.warmup, args.reps, log if args.verbose else None)
        m = {name: median(t) for name, t in times.items()}
        best = min(("reference", "reference CL"), key=m.__getitem__)
        ratio = m["inference"] / m["reference"]
        rows.append(
            {
                "model": model,
                "batch": batch,
                "times": times,
                "best_reference": best,
                "ratio": ratio,
                "ratio_generated": m["generated"] / m["reference"],
                "ratio_folded_nchw": m["folded"] / m["reference"],
                "ratio_best_reference": m["inference"] / m[best],
                "verdict": verdict(ratio, TARGET, times["inference"], times["reference"]),
            }
        )
    return {"model": model, "file": str(path), "differences": differences, "rows": rows}


def _copy_into(module, source: torch.nn.Module) -> torch.nn.Module:
    """A fresh model of ``module`` with ``source``'s weights and statistics."""
    model = module.create_model()
    model.load_state_dict(source.state_dict())
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="inference batch sizes (default 1 8)")
    parser.add_argument("--size", type=int, default=299, help="image height and width (default 299)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed alternating rounds first (default 3)")
    parser.add_argument("--reps", type=int, default=15, help="timed alternating rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast to bfloat16 (default none: fp32)")
    parser.add_argument(
        "--generated",
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="the generated torch file of a model (default generated/<model>_torch.py)",
    )
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS", help="first wait this long at most for a quiet machine")
    parser.add_argument("--json", default=None, help="also write the raw times to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed run")
    args = parser.parse_args(argv)
    files = {m: ROOT / "generated" / f"{m}_torch.py" for m in MODELS} | dict(g.split("=", 1) for g in args.generated)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    print(f"{today()}; {machine()}; torch {torch.__version__}; device {args.device}, amp {args.amp}, threads {torch.get_num_threads()}")
    if args.wait_idle:
        print(wait_idle(args.wait_idle))
    results = []
    with LoadMonitor() as load:
        for model in args.models:
            results.append(run_model(model, Path(files[model]), args))
    rows = []
    for result in results:
        for row in result["rows"]:
            t = row["times"]
            rows.append(
                (
                    row["model"],
                    row["batch"],
                    *(f"{median(t[name]) * 1e3:.1f} ({spread([v * 1e3 for v in t[name]], 1)})" for name in ("reference", "inference")),
                    *(f"{median(t[name]) * 1e3:.1f}" for name in ("reference CL", "generated", "folded")),
                    f"{row['ratio_generated']:.3f}",
                    f"{row['ratio_folded_nchw']:.3f}",
                    f"{row['ratio_best_reference']:.3f} ({'CL' if row['best_reference'] == 'reference CL' else 'NCHW'})",
                    f"**{row['ratio']:.3f}**",
                    row["verdict"],
                )
            )
    headers = (
        "model",
        "batch",
        "reference ms (IQR)",
        "inference ms (IQR)",
        "reference CL ms",
        "generated ms",
        "folded ms",
        "generated / ref",
        "folded / ref (NCHW)",
        "inference / best ref",
        "inference / ref",
        f"<= {TARGET}",
    )
    print(table(headers, rows))
    for result in results:
        d = result["differences"]
        print(
            f"{result['model']}: reference {REFERENCE[result['model']]}; max relative difference to the generated model:"
            f" folded {d['folded']:.2e}, inference {d['inference']:.2e}"
        )
    print(load.describe())
    write_json(args.json, {"args": vars(args), "results": results, "background_load": load.fraction})
    return 0


if __name__ == "__main__":
    sys.exit(main())
