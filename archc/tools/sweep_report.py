"""The comparison a sweep ends with, read from the trials' run folders (``eval.csv``,
``metrics.csv``, ``result.json``): ``trials.csv`` (one row per trial), ``sweep.csv`` and
``sweep.md`` (one row per variant: its params and counts, final and best validation
top-1 as mean and spread over the seeds, images/s, wall time), and the plots: validation
top-1 against epoch per variant with the seeds as a band (the paper's Figures 9 and 10),
and accuracy against multiply-adds."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from archc.tools.sweep import RESULT, read_result
from archc.tools.variants import markdown


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def trial_row(trial: Mapping[str, Any]) -> dict[str, Any]:
    """What one trial's run folder says: its evaluations, speed and wall time."""
    out = Path(trial["out"])
    evals = [(float(r["epoch"]), float(r["top1"])) for r in _rows(out / "eval.csv")]
    speeds = [float(r["images_per_s"]) for r in _rows(out / "metrics.csv")]
    result = read_result(out / RESULT)
    return {
        "trial": trial["id"],
        "variant": trial["variant"],
        "seed": trial["seed"],
        "finished": result.get("returncode") == 0,
        "final_top1": evals[-1][1] if evals else None,
        "best_top1": max(t for _, t in evals) if evals else None,
        "images_per_s": statistics.median(speeds) if speeds else None,  # the median logged window: warm-up aside
        "wall_s": result.get("wall_s"),
        "evals": evals,
    }


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation over the seeds; None for one seed)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(manifest: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per trial, one row per variant) of a sweep's manifest."""
    trials = [trial_row(t) for t in manifest["trials"]]
    variants = []
    for v in manifest["variants"]:
        done = [t for t in trials if t["variant"] == v["name"] and t["finished"]]
        row: dict[str, Any] = {"variant": v["name"], **v["params"]}
        row.update(trainable=v["trainable"], non_trainable=v["non_trainable"], macs=v["macs"], seeds=len(done))
        for key in ("final_top1", "best_top1"):
            row[f"{key}_mean"], row[f"{key}_std"] = _spread([t[key] for t in done if t[key] is not None])
        row["images_per_s"], _ = _spread([t["images_per_s"] for t in done if t["images_per_s"] is not None])
        row["wall_s"], _ = _spread([t["wall_s"] for t in done if t["wall_s"] is not None])
        row["status"] = v["status"] if v["status"] != "ok" else f"{len(done)} of {len(manifest['seeds'])} seeds done"
        row["evals"] = [t["evals"] for t in done]
        variants.append(row)
    return trials, variants


def _csv(rows: list[dict[str, Any]], skip: tuple[str, ...] = ("evals",)) -> str:
    buf = io.StringIO()
    keys = [k for k in rows[0] if k not in skip]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    writer.writerows([["" if r[k] is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]) for k in keys] for r in rows])
    return buf.getvalue()


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _markdown(manifest: Mapping[str, Any], variants: list[dict[str, Any]]) -> str:
    names = manifest["swept"]
    header = ["variant", *names, "trainable", "macs", "seeds", "final val top-1", "best val top-1", "images/s", "wall s"]
    rows: list[list[Any]] = [header]
    for v in variants:
        rows.append(
            [v["variant"], *(v[n] for n in names), v["trainable"] or "", v["macs"] or "", v["seeds"]]
            + [_pm(v["final_top1_mean"], v["final_top1_std"]), _pm(v["best_top1_mean"], v["best_top1_std"])]
            + [f"{v['images_per_s']:.1f}" if v["images_per_s"] else "", f"{v['wall_s']:.1f}" if v["wall_s"] else ""]
        )
    note = (
        f"\n{manifest['spec']}, seeds {', '.join(map(str, manifest['seeds']))}: mean ± sample standard deviation over the "
        "finished seeds; top-1 of the last and of the best evaluation; images/s the median logged window; wall time a trial's mean.\n"
    )
    return markdown(rows) + note


def write(manifest: Mapping[str, Any], out: Path) -> list[Path]:
    """trials.csv, sweep.csv, sweep.md and (with matplotlib) the two plots; returns them."""
    trials, variants = summarize(manifest)
    files = {out / "trials.csv": _csv(trials), out / "sweep.csv": _csv(variants), out / "sweep.md": _markdown(manifest, variants)}
    for path, text in files.items():
        path.write_text(text)
    written = list(files)
    if any(run for v in variants for run in v["evals"]):  # no --val-data: nothing to draw
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return written
        written += [profiles(variants, out / "profiles.png"), accuracy_vs_macs(variants, out / "accuracy_vs_macs.png")]
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def profiles(variants: list[dict[str, Any]], path: Path) -> Path:
    """Validation top-1 after each evaluation, per variant: the seeds' mean as a line, their
    range as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for v in variants:
        runs = [r for r in v["evals"] if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)  # evaluations every finished seed has
        epochs = [e for e, _ in runs[0][:n]]
        tops = [[r[i][1] for r in runs] for i in range(n)]
        (line,) = ax.plot(epochs, [statistics.fmean(t) for t in tops], marker="o", ms=3, label=f"{v['variant']} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(epochs, [min(t) for t in tops], [max(t) for t in tops], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("training profiles (line: mean over seeds; band: their range)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_macs(variants: list[dict[str, Any]], path: Path) -> Path:
    """Final validation top-1 (mean, seeds' standard deviation as the error bar) against
    multiply-adds, one point per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for v in variants:
        if v["final_top1_mean"] is None:
            continue
        ax.errorbar([v["macs"]], [v["final_top1_mean"]], yerr=[v["final_top1_std"] or 0], fmt="o", capsize=3, label=v["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("final validation top-1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
