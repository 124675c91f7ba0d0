"""Read TensorBoard event files back with tensorboard's own reader (the training tests)."""

from __future__ import annotations

from pathlib import Path


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files under ``folder``: torch's
    SummaryWriter writes scalar summaries, tf.summary tensor summaries; both are read."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()
    found = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in events.Tags()["tensors"]:
        found[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
    return found


def check_against_csv(folder: Path, rows: list[dict], evals: list[dict]) -> None:
    """The event files hold the same numbers as metrics.csv and eval.csv."""
    import pytest

    scalars = read_scalars(folder)
    assert {"train/loss", "train/lr", "train/images_per_s", "eval/ema/loss", "eval/ema/top1"} <= set(scalars), sorted(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [int(r["step"]) for r in rows]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([float(r["lr"]) for r in rows], rel=1e-5)
    assert [s for s, _ in scalars["eval/ema/top1"]] == [int(e["step"]) for e in evals]
    assert [v for _, v in scalars["eval/ema/top1"]] == pytest.approx([float(e["top1"]) for e in evals], rel=1e-5)
