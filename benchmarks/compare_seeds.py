"""How sure the seeds make a sweep's comparison: for each pair of variants of an ``archc
sweep`` folder, the difference of their mean final validation top-1, the per-seed
differences (seed s of one against seed s of the other: the same initial weights and data
order where the variants' weights have the same shapes), and Welch's and the paired
t-test's two-sided p-values (scipy, which scikit-learn's ``digits`` extra brings).

  python benchmarks/compare_seeds.py runs/fig9 runs/fig10 runs/spectrum
"""

from __future__ import annotations

import csv
import sys
from itertools import combinations
from pathlib import Path

from scipy import stats


def finals(folder: Path) -> dict[str, list[float]]:
    """Each variant's final validation top-1 by seed, in seed order."""
    found: dict[str, dict[int, float]] = {}
    with open(folder / "trials.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["finished"] == "True" and row["final_top1"]:
                found.setdefault(row["variant"], {})[int(row["seed"])] = float(row["final_top1"])
    return {variant: [by_seed[s] for s in sorted(by_seed)] for variant, by_seed in found.items()}


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        print(f"{folder}:")
        for (a, xs), (b, ys) in combinations(finals(folder).items(), 2):
            diff = sum(xs) / len(xs) - sum(ys) / len(ys)
            paired = [round(x - y, 4) for x, y in zip(xs, ys)]
            welch = stats.ttest_ind(xs, ys, equal_var=False).pvalue
            if len(xs) != len(ys) or len(set(paired)) < 2:  # no spread: the paired test has no answer
                pair = "none (no spread)" if len(xs) == len(ys) else "none (unpaired)"
            else:
                pair = f"{stats.ttest_rel(xs, ys).pvalue:.3f}"
            print(f"  {a} - {b}: {diff:+.4f}; by seed {paired}; Welch p {welch:.3f}, paired p {pair}")


if __name__ == "__main__":
    main()
