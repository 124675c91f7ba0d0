"""How fast archc answers, against building the reference model in a framework.

For each bundled spec, wall-clock time of fresh processes (interpreter start and imports
included), alternating A B C ... after a warm-up round, medians:

  archc params SPEC                         (shapes, parameters, multiply-adds; no framework)
  archc build SPEC --backend torch -o TMP   (renders the PyTorch module)
  archc build SPEC --backend keras -o TMP   (renders the Keras module)
  the PyTorch reference: python -c "import timm; m = timm.create_model('legacy_xception'); print(sum(p.numel() for p in m.parameters()))"
                         (torchvision's inception_v3 for inception_v3_slim)
  the Keras reference:   python -c "import keras; m = keras.applications.Xception(weights=None); print(m.count_params())"
                         (InceptionV3 for inception_v3_slim)

and prints the ratios archc / reference (below 1: archc is faster).

Environment: the PyTorch references run with --torch-python (default .venv-bench/bin/python,
the environment of bench_torch.py, which has timm and torchvision), the Keras references
with --keras-python (default: this interpreter if it has keras), archc with --archc
(default: the archc script beside this interpreter).

  python benchmarks/bench_compile.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, SPECS, LoadMonitor, alternate, machine, median, spread, table, time_command, today, wait_idle, write_json

TORCH_REFERENCE = {
    "xception": "import timm; m = timm.create_model('legacy_xception'); print(sum(p.numel() for p in m.parameters()))",
    "inception_v3_slim": (
        "import torchvision; m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False); "
        "print(sum(p.numel() for p in m.parameters()))"
    ),
}
KERAS_REFERENCE = {
    "xception": "import keras; m = keras.applications.Xception(weights=None); print(m.count_params())",
    "inception_v3_slim": "import keras; m = keras.applications.InceptionV3(weights=None); print(m.count_params())",
}


def default_archc() -> str:
    beside = Path(sys.executable).parent / "archc"
    return str(beside) if beside.exists() else (shutil.which("archc") or "archc")


def default_torch_python() -> str:
    venv = ROOT / ".venv-bench" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def default_keras_python() -> str:
    return sys.executable if importlib.util.find_spec("keras") else (shutil.which("python3") or "python3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(SPECS), default=list(SPECS))
    parser.add_argument("--reps", type=int, default=5, help="timed alternating rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1: warms the file cache)")
    parser.add_argument("--archc", default=default_archc(), help="the archc command (default: %(default)s)")
    parser.add_argument("--torch-python", default=default_torch_python(), help="Python with timm and torchvision (default: %(default)s)")
    parser.add_argument("--keras-python", default=default_keras_python(), help="Python with keras (default: %(default)s)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras backend and references")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch backend and references")
    parser.add_argument(
        "--wait-idle", type=float, default=0, metavar="SECONDS", help="first wait up to this long for other processes to go quiet"
    )
    parser.add_argument("--json", default=None, help="also write the raw times to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed run on stderr")
    args = parser.parse_args(argv)

    if args.wait_idle:
        print(wait_idle(args.wait_idle))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tempfile.mkdtemp(prefix="archc-bench-compile-")
    print("# archc compile speed vs building the reference models\n")
    print(f"date: {today()}")
    print(f"machine: {machine()}")
    print(f"archc: {args.archc}; PyTorch references: {args.torch_python}; Keras references: {args.keras_python}")
    print("each command is a fresh process (interpreter start and imports included); alternating rounds after warm-up; medians\n")
    results = {}
    for model in args.models:
        spec = str(SPECS[model].relative_to(ROOT)) if SPECS[model].is_relative_to(ROOT) else str(SPECS[model])
        commands: dict[str, list[str]] = {f"archc params {spec}": [args.archc, "params", spec]}
        pairs = []  # (archc command, reference command)
        if not args.no_torch:
            build = f"archc build {spec} --backend torch"
            commands[build] = [args.archc, "build", spec, "--backend", "torch", "-o", out, "--quiet"]
            commands["torch reference"] = [args.torch_python, "-c", TORCH_REFERENCE[model]]
            pairs += [(f"archc params {spec}", "torch reference"), (build, "torch reference")]
        if not args.no_keras:
            build = f"archc build {spec} --backend keras"
            commands[build] = [args.archc, "build", spec, "--backend", "keras", "-o", out, "--quiet"]
            commands["keras reference"] = [args.keras_python, "-c", KERAS_REFERENCE[model]]
            pairs += [(f"archc params {spec}", "keras reference"), (build, "keras reference")]
        runs = {name: (lambda cmd=cmd: time_command(cmd, env)) for name, cmd in commands.items()}
        log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
        with LoadMonitor() as load:
            times = alternate(runs, args.warmup, args.reps, log)
        results[model] = {"commands": commands, "times": times, "background_load": load.fraction}
        print(f"## {model}\n")
        print(load.describe())
        if not args.no_torch:
            print(f'torch reference: python -c "{TORCH_REFERENCE[model]}"')
        if not args.no_keras:
            print(f'keras reference: python -c "{KERAS_REFERENCE[model]}"')
        print()
        print(table(["command", "median s", "spread (IQR)"], [(name, f"{median(t):.3f}", spread(t)) for name, t in times.items()]))
        print()
        print(
            table(
                ["archc / reference", "ratio", "archc is"],
                [
                    (f"{a} / {b}", f"{median(times[a]) / median(times[b]):.3f}", f"{median(times[b]) / median(times[a]):.1f}x faster")
                    for a, b in pairs
                ],
            )
        )
        print()
    write_json(args.json, {"date": today(), "machine": machine(), "args": vars(args), "results": results})
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
