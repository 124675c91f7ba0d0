"""What ``archc sweep`` costs beyond its trials: the sweep's wall time against the time in
which at least one trial's ``archc train`` was running (the union of the trials' start..end
from their ``result.json``). The rest is the sweep's overhead: the CLI's start, planning
and the manifest, the engine's start (Ray, submitit), scheduling gaps between trials and
collecting the results into the tables and plots. Each engine runs the same sweep in a
fresh folder, one trial at a time (``--jobs 1``; submitit's local executor starts every
task at once), with the train options given after ``--``.

  python benchmarks/digits.py runs/digits/data
  python benchmarks/bench_sweep.py --out runs/bench_sweep -- -p middle_repeats=1 -p classes=10 \\
      --image-size 32 --max-steps 20 --no-augment --data runs/digits/data/train --val-data runs/digits/data/val
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, LoadMonitor, machine, table, today, write_json

ENGINES = {"local": ["--jobs", "1"], "ray": ["--jobs", "1"], "submitit": ["--cluster", "local"]}


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def run(engine: str, out: Path, spec: str, sweeps: list[str], seeds: int, train: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "archc", "sweep", spec, *(a for s in sweeps for a in ("--sweep", s)), "--seeds", str(seeds)]
    cmd += ["-o", str(out), "--engine", engine, *ENGINES[engine], *train]
    with LoadMonitor() as load:
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{engine}: archc sweep exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/result.json"))]
    busy = busy_seconds([(r["start"], r["end"]) for r in results])
    return {"engine": engine, "trials": len(results), "wall_s": wall, "trials_s": busy, "overhead_s": wall - busy, "load": load.describe()}


def finished_row(item: str) -> dict:
    """The row of a sweep that ran outside this script (the digits experiments), from
    ``ENGINE=OUT:WALL_S``."""
    engine, rest = item.split("=", 1)
    out, wall = rest.rsplit(":", 1)
    results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("trials/*/result.json"))]
    busy = busy_seconds([(r["start"], r["end"]) for r in results])
    return {
        "engine": engine,
        "trials": len(results),
        "wall_s": float(wall),
        "trials_s": busy,
        "overhead_s": float(wall) - busy,
        "load": "as it was",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "xception.yaml"))
    parser.add_argument("--sweep", action="append", default=None, help="as archc sweep's (default: residual=true,false)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--engines", default="local,ray,submitit")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--finished",
        action="append",
        default=[],
        metavar="ENGINE=OUT:WALL_S",
        help="a sweep already run (its folder and the wall time its archc sweep took, as the shell's clock measured it): its row, no run",
    )
    parser.add_argument("train", nargs=argparse.REMAINDER, help="-- then archc train's options")
    args = parser.parse_args()
    train = args.train[1:] if args.train[:1] == ["--"] else args.train
    print(f"{today()}; {machine()}")
    rows = [finished_row(item) for item in args.finished]
    for engine in [] if args.finished else args.engines.split(","):
        row = run(engine, args.out / engine, args.spec, args.sweep or ["residual=true,false"], args.seeds, train)
        print(f"{engine}: {row['load']}", flush=True)
        rows.append(row)
    print(
        table(
            ["engine", "trials", "sweep wall s", "trials running s", "overhead s", "overhead %"],
            [
                (
                    r["engine"],
                    r["trials"],
                    f"{r['wall_s']:.1f}",
                    f"{r['trials_s']:.1f}",
                    f"{r['overhead_s']:.1f}",
                    f"{100 * r['overhead_s'] / r['wall_s']:.1f}",
                )
                for r in rows
            ],
        )
    )
    write_json(args.json, {"date": today(), "machine": machine(), "train": train, "rows": rows})


if __name__ == "__main__":
    main()
