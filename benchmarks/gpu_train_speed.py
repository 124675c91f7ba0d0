"""`archc train` on one GPU against the bare training step of the same model: Xception,
batch 128, bf16 autocast, channels_last, with the synthetic source and with a JPEG folder
made on the spot. Prints images/s and the ratios; the acceptance is >= 0.95.

The bare step is forward + cross-entropy + backward + the recipe's optimizer step
(:func:`archc.backends.torch_backend.train.make_optimizer`), on one batch already on the
GPU, timed with CUDA synchronisation; ``archc train`` adds the input pipeline, the EMA
update and the schedule. Both train the module ``archc train`` rendered (10 classes).
``archc train``'s rate is the median of its ``metrics.csv`` windows after the first (the
first holds cuDNN's autotuning and the workers' start); the data sets hold more than the
steps run, so no checkpoint falls inside a timed window.

usage: python3 benchmarks/gpu_train_speed.py --out DIR [--steps 100] [--jpegs 13000] [--workers 14]
Run by benchmarks/gpu_check.sh on the lent GPU machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, CLASSES, SIZE = 128, 10, 299


def write_jpeg(args) -> None:
    import numpy as np
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    width, height = 500, 375
    coarse = rng.integers(0, 256, size=(height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(field + rng.integers(-12, 13, size=field.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def make_folder(root: Path, count: int) -> Path:
    jobs = []
    for i in range(count):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", i))
    with Pool(os.cpu_count()) as pool:
        pool.map(write_jpeg, jobs, chunksize=64)
    return root


def archc_train(data: str, out: Path, steps: int, workers: int, samples: int) -> float:
    cmd = [sys.executable, "-m", "archc", "train", str(ROOT / "specs/xception.yaml"), "--data", data, "-o", str(out)]
    cmd += ["-p", f"classes={CLASSES}", "--batch-size", str(BATCH), "--max-steps", str(steps), "--log-every", "20"]
    cmd += ["--precision", "bf16", "--channels-last", "on", "--loader-workers", str(workers), "--no-resume"]
    cmd += ["--synthetic-samples", str(samples)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out / "metrics.csv", newline="") as fh:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(fh)]
    print(f"  windows (images/s): {', '.join(f'{r:,.0f}' for r in rates)}", flush=True)
    return statistics.median(rates[1:])


def bare_step(model_file: Path, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    from archc.backends.torch_backend.train import make_optimizer
    from archc.codegen.backend import get
    from archc.ir.resolve import compile_spec
    from archc.training.kit import RunConfig, effective_recipe

    spec = str(ROOT / "specs/xception.yaml")
    recipe = effective_recipe(compile_spec(spec, {}).training, RunConfig(spec, "synthetic", Path("."), batch_size=BATCH), spec)
    net = get("torch").load(model_file).create_model().cuda().to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(recipe, net)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    windows = []
    for _ in range(max(1, steps // 20)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        windows.append(20 * BATCH / (time.perf_counter() - start))
    print(f"  bare windows (images/s): {', '.join(f'{r:,.0f}' for r in windows)}", flush=True)
    return statistics.median(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jpegs", type=int, default=13000, help="images in the JPEG folder (500x375); more than steps x 128")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = parser.parse_args()
    import torch

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "archc-gpu-speed"
    started = time.perf_counter()
    folder = make_folder(work / "jpegs", args.jpegs)
    print(f"wrote {args.jpegs} JPEGs (500x375, quality 90) in {time.perf_counter() - started:.0f} s", flush=True)

    results = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch": BATCH,
        "input": SIZE,
        "date": time.strftime("%Y-%m-%d"),
    }
    results["archc_synthetic"] = archc_train("synthetic", work / "run-synthetic", args.steps, args.workers, BATCH * (args.steps + 20))
    results["archc_jpeg"] = archc_train(str(folder), work / "run-jpeg", args.steps, args.workers, 1024)
    results["bare"] = bare_step(work / "run-synthetic" / "model" / "xception_torch.py", args.steps)
    for source in ("synthetic", "jpeg"):
        results[f"ratio_{source}"] = results[f"archc_{source}"] / results["bare"]
    print(
        f"\n{results['gpu']}, torch {results['torch']}: Xception, batch {BATCH}, bf16, channels_last\n"
        f"  bare training step        {results['bare']:8,.0f} images/s\n"
        f"  archc train, synthetic    {results['archc_synthetic']:8,.0f} images/s  ratio {results['ratio_synthetic']:.3f}\n"
        f"  archc train, JPEG folder  {results['archc_jpeg']:8,.0f} images/s  ratio {results['ratio_jpeg']:.3f} "
        f"({args.workers} loader workers, 500x375 JPEGs)",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_train_speed.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
