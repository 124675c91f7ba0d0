"""The one training loop (archc.training.loop) over an engine that records what it is
asked: the cadence of steps, logs, checkpoints and evaluations, resuming, the digests and
final files, and that the kit and the loop import no framework."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from archc.syntax.errors import UserError
from archc.training.kit import RunConfig, Schedule, check_resumable, epoch_spans, prepare, write_json
from archc.training.loop import train

ROOT = Path(__file__).parents[1]
XCEPTION = str(ROOT / "specs/xception.yaml")


class Recorder:
    """An engine (archc.training.loop.Engine) with no model: it logs its calls."""

    kind, replicas, is_main, rank_name, checkpoint_suffix, unreadable = "fake/one", 1, True, "rank-0", ".fake.json", 0

    def __init__(self, term_at: int | None = None):
        self.calls: list = []
        self.term_at = term_at  # SIGTERM to this process during this batch
        self.agreed = 0

    def describe(self):
        return "a recording engine"

    def restore(self, path, signature):
        saved = json.loads(path.read_text())
        check_resumable(saved["signature"], signature, path)
        self.calls.append(("restore", saved["step"]))
        return saved["step"]

    def batches(self, start, total):
        self.calls.append(("batches", start, total))
        return iter(range(start, total))

    def step(self, batch):
        self.calls.append(("step", batch))
        if batch == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def mean_loss(self):
        self.calls.append(("loss",))
        return 0.5

    def save(self, path, signature, step):
        self.calls.append(("save", step))
        write_json(path, {"signature": signature, "step": step})

    def evaluate(self):
        self.calls.append(("eval",))
        return "live", 0.25, 0.75, 16

    def digests(self):
        return {"params": "p", "state": "s", "ema": None}

    def save_final(self, out):
        (out / "final.fake").write_text("weights")
        return out / "final.fake"

    def barrier(self):
        self.calls.append(("barrier",))

    def agree(self, stop):
        self.agreed += 1
        return stop


def run(tmp_path, term_at=None, **options):
    small = {"params": {"middle_repeats": "1", "classes": "4"}, "image_size": (32, 32), "synthetic_samples": 16, "batch_size": 4}
    config = RunConfig(XCEPTION, "synthetic", tmp_path / "run", val_data="synthetic", **{**small, **options})
    prepared = prepare(config)
    engine = Recorder(term_at)
    train(prepared, Schedule.for_run(prepared, engine.replicas), engine)
    return engine.calls


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_the_loop_logs_checkpoints_and_evaluates_on_its_cadence(tmp_path, capsys):
    calls = run(tmp_path, max_steps=6, log_every=4, checkpoint_every=3)  # 4 steps an epoch
    assert calls[0] == ("batches", 0, 6)
    marks = [c for c in calls if c[0] != "step"]
    assert marks == [
        ("batches", 0, 6),
        ("save", 3),
        ("loss",),  # step 4: log, end of epoch: checkpoint and evaluation
        ("save", 4),
        ("eval",),
        ("loss",),  # step 6: the last, all three
        ("save", 6),
        ("eval",),
        ("barrier",),
    ]
    assert [c[1] for c in calls if c[0] == "step"] == list(range(6))
    out = tmp_path / "run"
    assert [r[0] for r in rows(out / "metrics.csv")] == ["step", "4", "6"]
    assert rows(out / "eval.csv")[1:] == [
        ["4", "1.0000", "live", "0.250000", "0.750000", "16"],
        ["6", "1.5000", "live", "0.250000", "0.750000", "16"],
    ]
    assert json.loads((out / "ranks" / "rank-0.json").read_text()) == {"step": 6, "params": "p", "state": "s", "ema": None}
    assert json.loads((out / "run.json").read_text())["engine"] == "fake/one"
    printed = capsys.readouterr().out
    assert f"archc train: xception ({out / 'model' / 'xception_torch.py'}), a recording engine\n" in printed
    assert "4 steps an epoch, 6 steps" in printed and f"done: 6 steps; weights in {out / 'final.fake'}" in printed


def test_the_loop_resumes_where_its_checkpoint_left_off(tmp_path, capsys):
    run(tmp_path, max_steps=5, log_every=1, checkpoint_every=0)
    calls = run(tmp_path, max_steps=7, log_every=1)
    assert calls[:2] == [("restore", 5), ("batches", 5, 7)]
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'latest.fake.json'} at step 5" in capsys.readouterr().out
    assert [r[0] for r in rows(tmp_path / "run" / "metrics.csv")[1:]] == [str(s) for s in range(1, 8)]
    assert run(tmp_path, max_steps=7, resume=False)[0] == ("batches", 0, 7)
    with pytest.raises(UserError, match="cannot resume a different run"):
        run(tmp_path, max_steps=7, batch_size=2)


def test_sigterm_checkpoints_after_the_step_under_way_and_the_same_command_resumes(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    calls = run(tmp_path, term_at=4, max_steps=7, log_every=3, checkpoint_every=0)  # 4 steps an epoch
    assert [c for c in calls if c[0] != "step"] == [("batches", 0, 7), ("loss",), ("save", 4), ("eval",), ("save", 5), ("barrier",)]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the loop's only while it runs
    out = tmp_path / "run"
    printed = capsys.readouterr().out
    assert (
        f"stopped by SIGTERM after step 5 of 7; checkpoint {out / 'checkpoints' / 'latest.fake.json'}; the same command resumes" in printed
    )
    assert not (out / "final.fake").exists() and not (out / "ranks").exists()

    calls = run(tmp_path, max_steps=7, log_every=3, checkpoint_every=0)
    assert calls[:2] == [("restore", 5), ("batches", 5, 7)]
    assert "done: 7 steps" in capsys.readouterr().out
    assert json.loads((out / "ranks" / "rank-0.json").read_text())["step"] == 7


def test_epoch_spans_cut_a_resumed_run_at_epoch_ends():
    assert list(epoch_spans(4, 0, 10)) == [(0, 0, 4), (1, 0, 4), (2, 0, 2)]
    assert list(epoch_spans(4, 5, 10)) == [(1, 1, 4), (2, 0, 2)]
    assert list(epoch_spans(4, 8, 8)) == []


def test_the_kit_and_the_loop_import_no_framework():
    code = "import sys, archc.training.kit, archc.training.loop; print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
