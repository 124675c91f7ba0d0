"""`archc train --backend torch`: DDP under torchrun (2 processes, gloo), checkpoints that
survive SIGKILL, resuming with optimizer, schedule, EMA and step, and the data options."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from events import check_against_csv  # noqa: E402
from imagefolder import damaged_png, make_image_folder  # noqa: E402
from interrupt import children, sigterm_once_started  # noqa: E402

from archc.ir.recipe import LearningRate, learning_rate_at  # noqa: E402

ROOT = Path(__file__).parents[1]
XCEPTION = str(ROOT / "specs/xception.yaml")
SMALL = ["-p", "middle_repeats=1", "-p", "classes=4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def archc_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "archc", "train", XCEPTION, *SMALL, *args]


def test_two_process_torchrun_keeps_replicas_identical_and_learns(tmp_path):
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "archc", "train", XCEPTION, *SMALL]
    cmd += ["--data", str(data), "--val-data", str(data), "-o", str(out), "--image-size", "64", "--batch-size", "4"]
    cmd += ["--max-steps", "12", "--log-every", "1", "--lr", "0.01"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es), DDP gloo, global batch 8" in proc.stdout
    assert "48 images of 4 classes, resized to 64x64; 6 steps an epoch, 12 steps" in proc.stdout

    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 12
    for key in ("params", "state", "ema"):  # weights, BN statistics and EMA agree bit for bit
        assert ranks[0][key] == ranks[1][key], key

    rows = metrics(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    evals = list(csv.DictReader(open(out / "eval.csv")))  # after each epoch, on both ranks' shards
    assert [(e["step"], e["weights"], e["samples"]) for e in evals] == [("6", "ema", "48"), ("12", "ema", "48")]
    check_against_csv(out / "tensorboard", rows, evals)  # TensorBoard holds the same numbers

    run = json.loads((out / "run.json").read_text())
    assert run["replicas"] == 2 and run["global_batch"] == 8 and run["engine"] == "torch/ddp"
    from archc.codegen.backend import get

    module = get("torch").load(out / "model" / "xception_torch.py")
    model = module.create_model()
    model.load_state_dict(torch.load(out / "final_ema.pt", weights_only=True))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_torchrun_restarts_a_group_that_lost_a_worker_and_it_ends_as_an_uninterrupted_run(tmp_path):
    """Elastic restart: with --max-restarts 1, one of two workers killed mid-run makes
    torchrun stop the other and start the group again; it resumes from the last
    checkpoint and ends with the weights of a run that was never interrupted."""
    common = ["--data", "synthetic", "--synthetic-samples", "32", "--image-size", "32", "--batch-size", "4"]
    common += ["--max-steps", "24", "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.005"]

    def torchrun(out: Path, *extra: str) -> list[str]:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra]
        return [*launch, "-m", "archc", "train", XCEPTION, *SMALL, *common, "-o", str(out)]

    straight = tmp_path / "straight"
    proc = subprocess.run(torchrun(straight), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = tmp_path / "restarted"
    ckpt = out / "checkpoints" / "latest.pt"
    agent = subprocess.Popen(torchrun(out, "--max-restarts=1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [pid for pid in children(agent.pid) if b"archc" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2 and agent.poll() is None, f"the run ended before a worker could be killed: {workers}"
    os.kill(workers[-1], signal.SIGKILL)
    printed, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, printed
    saved = [int(line.split()[-1]) for line in printed.splitlines() if line.startswith(f"resuming from {ckpt} at step ")]
    assert len(saved) == 1 and 0 < saved[0] < 24, printed  # the second group resumed, once

    a = json.loads((straight / "ranks" / "rank-0.json").read_text())
    for rank in (0, 1):  # both replicas of the restarted group hold the uninterrupted run's bits
        assert json.loads((out / "ranks" / f"rank-{rank}.json").read_text()) == a
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, 25))


def test_a_killed_or_terminated_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path):
    common = ["--data", "synthetic", "--synthetic-samples", "16", "--image-size", "32", "--batch-size", "4"]
    common += ["--max-steps", "12", "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.005"]

    straight = tmp_path / "straight"
    proc = subprocess.run(archc_train(*common, "-o", str(straight)), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "latest.pt"
    victim = subprocess.Popen(archc_train(*common, "-o", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < saved < 12

    proc = subprocess.run(archc_train(*common, "-o", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming from {ckpt} at step {saved}" in proc.stdout
    assert f"step {saved + 1}/12" in proc.stdout and f"step {saved}/12" not in proc.stdout
    assert not list(ckpt.parent.glob(".tmp-*"))  # what the kill left half-written is gone

    # SIGTERM (Slurm's notice before preemption): a checkpoint after the step under way, exit 0
    termed = tmp_path / "termed"
    status, printed = sigterm_once_started(archc_train(*common, "--checkpoint-every", "0", "-o", str(termed)), ENV)
    ckpt = termed / "checkpoints" / "latest.pt"
    stopped = torch.load(ckpt, weights_only=True)["step"]
    assert status == 0 and 0 < stopped < 12, printed
    assert f"stopped by SIGTERM after step {stopped} of 12; checkpoint {ckpt}; the same command resumes" in printed
    assert not (termed / "final.pt").exists()
    proc = subprocess.run(
        archc_train(*common, "--checkpoint-every", "0", "-o", str(termed)), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == 0 and f"resuming from {ckpt} at step {stopped}" in proc.stdout, proc.stdout + proc.stderr

    rows = metrics(out)  # rows logged after the checkpoint by the killed run were replaced
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    recipe = LearningRate(initial=0.005, decay=0.94, every_epochs=2)  # xception's schedule, --lr 0.005
    for r in rows:  # 4 steps an epoch: the rate decays after step 8, across the resume
        assert float(r["lr"]) == pytest.approx(learning_rate_at(recipe, (int(r["step"]) - 1) * 4, 16, 4))
    assert float(rows[-1]["lr"]) == pytest.approx(0.005 * 0.94)

    # optimizer momentum, LR schedule, EMA, RNG and data position all restored: same bits
    a = json.loads((straight / "ranks" / "rank-0.json").read_text())
    b = json.loads((out / "ranks" / "rank-0.json").read_text())
    assert a == b
    assert json.loads((termed / "ranks" / "rank-0.json").read_text()) == a


def test_data_is_chosen_explicitly_and_checked(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from archc.cli import main

    def train(*args):
        return CliRunner().invoke(main, ["train", XCEPTION, *SMALL, "-o", str(tmp_path / "run"), *args])

    missing = train("--image-size", "64")
    assert missing.exit_code == 2 and "Missing option '--data'" in missing.output

    nowhere = train("--image-size", "64", "--data", str(tmp_path / "nowhere"))
    assert nowhere.exit_code == 2 and "expected 'synthetic' or a folder of class folders" in nowhere.output

    data = tmp_path / "three"
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / name / "x.png")
    wrong = train("--image-size", "64", "--data", str(data))
    assert wrong.exit_code == 2
    assert "expected 4 class folders (the network's classes), found 3 (a, b, c); pass -p classes=3" in wrong.output

    small = train("--image-size", "5", "--data", "synthetic")
    assert small.exit_code == 2 and "--image-size 5x5 is too small for this network" in small.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_spec_without_training_trains_with_the_default_recipe_and_says_so(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [16, 16, 3]\nflows:\n  main: [conv: {filters: 4, kernel: 3}, global_avg_pool, dense: 3]\n")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "archc",
        "train",
        str(spec),
        "--data",
        "synthetic",
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    header = done.stdout + done.stderr
    assert "recipe: the default (the spec has no training: section" in header
    assert "sgd (momentum 0.9), learning rate 0.1, x0.1 every 30 epochs, weight decay 0.0001, 4 images a replica, 90 epochs" in header
    assert json.loads((out / "run.json").read_text())["recipe"]["learning_rate"]["initial"] == 0.1


def test_the_torch_trainer_never_imports_tensorflow(tmp_path):
    """TensorBoard events are written by the kit's own writer: torch.utils.tensorboard
    would import TensorFlow where it is installed (seconds of start-up and its log lines)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [16, 16, 3]\nflows:\n  main: [conv: {filters: 4, kernel: 3}, global_avg_pool, dense: 3]\n")
    out = tmp_path / "run"
    code = (
        "import sys\nfrom archc.cli import main\n"
        f"try:\n    main(['train', {str(spec)!r}, '--data', 'synthetic', '-o', {str(out)!r}, '--max-steps', '2', '--batch-size', '4'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"
    assert any((out / "tensorboard").iterdir())  # the events were written, without TensorFlow


def test_a_file_that_fails_to_decode_mid_run_is_skipped_and_counted(tmp_path):
    """It passes the check before step 1 (header, size, mode, end marker), then fails in
    the loader: one line on stderr each time, counted, never a traceback."""
    data = make_image_folder(tmp_path / "data", per_class=3)
    bad = damaged_png(data / "red" / "damaged.png")
    out = tmp_path / "run"
    args = ["--data", str(data), "--val-data", str(data), "-o", str(out), "--image-size", "32", "--batch-size", "4", "--epochs", "1"]
    proc = subprocess.run(archc_train(*args), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "13 images of 4 classes" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"archc train: skipped {bad}: it failed to decode (")]
    count = json.loads((out / "ranks" / "rank-0.json").read_text())["unreadable"]
    assert count == len(lines) >= 1  # the evaluation reads every file: at least once
    assert f"{count} files that failed to decode were skipped" in proc.stdout


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"PK\x03\x04truncated"])
def test_a_checkpoint_that_cannot_be_read_is_one_line_and_exit_2(tmp_path, content):
    """A resumed run whose OUT/checkpoints/latest.pt is empty, garbage or a cut zip: the
    user's file to move, not 'a bug in archc' (exit 3, as it was)."""
    from click.testing import CliRunner

    from archc.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [8, 8, 3]\nflows:\n  main: [conv: {filters: 2, kernel: 3}, global_avg_pool, dense: 2]\n")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(content)
    args = ["train", str(spec), "--data", "synthetic", "--synthetic-samples", "8", "--batch-size", "4", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {latest}: expected a checkpoint of archc train, found a file it cannot read (")
    assert result.output.endswith("); use another --out or --no-resume\n")
    assert latest.read_bytes() == content  # left for the user


def test_an_out_folder_under_a_file_is_one_line_and_exit_2(tmp_path):
    """``-o FILE/run`` cannot be made (it was 'a bug in archc', NotADirectoryError, exit 3)."""
    from click.testing import CliRunner

    from archc.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [8, 8, 3]\nflows:\n  main: [conv: {filters: 2, kernel: 3}, global_avg_pool, dense: 2]\n")
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    result = CliRunner().invoke(main, ["train", str(spec), "--data", "synthetic", "-o", str(out)])
    assert (result.exit_code, result.output) == (2, f"error: -o {out}: expected a folder archc train can write, found Not a directory\n")
