"""`archc train --backend keras`: two MultiWorkerMirroredStrategy workers on loopback
(TF_CONFIG), the learning-rate schedule against the recipe's numbers, and a run killed
with SIGKILL that resumes from its checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("PIL")

from events import check_against_csv  # noqa: E402
from imagefolder import damaged_png, make_image_folder  # noqa: E402
from interrupt import sigterm_once_started  # noqa: E402

from archc.ir.recipe import LearningRate, learning_rate_at  # noqa: E402

ROOT = Path(__file__).parents[1]
XCEPTION = str(ROOT / "specs/xception.yaml")
SMALL = ["-p", "middle_repeats=1", "-p", "classes=4"]
ENV = {
    **os.environ,
    "KERAS_BACKEND": "tensorflow",
    "CUDA_VISIBLE_DEVICES": "",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


def archc_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "archc", "train", XCEPTION, "--backend", "keras", *SMALL, *args]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_schedule_is_the_recipes_staircase():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from archc.backends.keras_backend.train import make_schedule
    from archc.ir.recipe import Optimizer, Training
    from archc.training.kit import Schedule

    for lr in (
        LearningRate(initial=0.045, decay=0.94, every_epochs=2),
        LearningRate(initial=0.001, decay=0.9, every_samples=3_000_000, warmup_epochs=0.5),
        LearningRate(initial=0.1),
    ):
        training = Training(optimizer=Optimizer(kind="sgd"), learning_rate=lr, batch_size=32, epochs=100)
        schedule = Schedule(training, dataset_size=1_281_167, replicas=60)  # ImageNet on the paper's 60 GPUs
        keras_schedule = make_schedule(schedule)
        for step in (0, 1, 166, 167, 332, 333, 334, 1000, 1333, 1334, 20000, 66000):
            expected = learning_rate_at(lr, step * 1920, schedule.samples_per_epoch, 1920)
            assert float(keras_schedule(step)) == pytest.approx(expected, rel=1e-6), (lr, step)
            assert schedule.learning_rate(step) == expected


def test_two_multiworker_mirrored_workers_stay_identical_and_learn(tmp_path):
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    cmd = archc_train("--data", str(data), "--val-data", str(data), "-o", str(out), "--image-size", "64", "--batch-size", "4")
    cmd += ["--max-steps", "12", "--log-every", "1", "--lr", "0.01"]
    workers = [
        subprocess.Popen(
            cmd,
            env={**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)[-6000:]
    chief = logs[0]
    assert "MultiWorkerMirroredStrategy" in chief or "CollectiveAllReduceStrategy" in chief
    assert "2 replica(s), global batch 8" in chief
    assert "48 images of 4 classes, resized to 64x64; 6 steps an epoch, 12 steps" in chief
    assert "step 1/12" not in logs[1]  # only the chief logs

    ranks = [json.loads((out / "ranks" / f"worker-{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 12
    for key in ("params", "state", "ema"):  # weights, averaged BN statistics and EMA agree bit for bit
        assert ranks[0][key] == ranks[1][key], key

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    evals = list(csv.DictReader(open(out / "eval.csv")))
    assert [(e["step"], e["weights"], e["samples"]) for e in evals] == [("6", "ema", "48"), ("12", "ema", "48")]
    check_against_csv(out / "tensorboard", rows, evals)  # TensorBoard holds the same numbers

    import keras

    from archc.codegen.backend import get

    model = get("keras").load(out / "model" / "xception_keras.py").create_model()
    model.load_weights(out / "final_ema.weights.h5")
    assert tuple(model(keras.ops.zeros((1, 64, 64, 3))).shape) == (1, 4)


def test_a_killed_or_terminated_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path):
    common = ["--data", "synthetic", "--synthetic-samples", "32", "--image-size", "32", "--batch-size", "4"]
    common += ["--max-steps", "8", "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.005"]
    straight = tmp_path / "straight"
    proc = subprocess.run(archc_train(*common, "-o", str(straight)), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "latest.keras-ckpt.npz"
    victim = subprocess.Popen(archc_train(*common, "-o", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    import numpy as np

    with np.load(ckpt) as saved_file:
        saved = json.loads(str(saved_file["meta"]))["step"]
    assert 0 < saved < 8

    proc = subprocess.run(archc_train(*common, "-o", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming from {ckpt} at step {saved}" in proc.stdout
    assert f"step {saved + 1}/8" in proc.stdout and f"step {saved}/8" not in proc.stdout
    assert not list(ckpt.parent.glob(".tmp-*"))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))

    # SIGTERM (Slurm's notice before preemption): a checkpoint after the step under way, exit 0
    termed = tmp_path / "termed"
    again = archc_train(*common, "--checkpoint-every", "0", "-o", str(termed))
    status, printed = sigterm_once_started(again, ENV)
    ckpt = termed / "checkpoints" / "latest.keras-ckpt.npz"
    with np.load(ckpt) as saved_file:
        stopped = json.loads(str(saved_file["meta"]))["step"]
    assert status == 0 and 0 < stopped < 8, printed
    assert f"stopped by SIGTERM after step {stopped} of 8; checkpoint {ckpt}; the same command resumes" in printed
    assert not (termed / "final.weights.h5").exists()
    proc = subprocess.run(again, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0 and f"resuming from {ckpt} at step {stopped}" in proc.stdout, proc.stdout + proc.stderr

    # optimizer (momentum, step counter: the schedule), EMA, dropout seeds, data position
    a = json.loads((straight / "ranks" / "worker-0.json").read_text())
    b = json.loads((out / "ranks" / "worker-0.json").read_text())
    assert a == b
    assert json.loads((termed / "ranks" / "worker-0.json").read_text()) == a


def test_a_file_that_fails_to_decode_mid_run_is_skipped_and_counted(tmp_path):
    """It passes the check before step 1, then fails in tf.data: skipped, counted (one
    line each time the count grows), never a traceback."""
    data = make_image_folder(tmp_path / "data", per_class=3)
    damaged_png(data / "red" / "damaged.png")
    out = tmp_path / "run"
    args = ["--data", str(data), "--val-data", str(data), "-o", str(out), "--image-size", "32", "--batch-size", "4", "--epochs", "1"]
    proc = subprocess.run(archc_train(*args, "--log-every", "1"), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "13 images of 4 classes" in proc.stdout
    count = json.loads((out / "ranks" / "worker-0.json").read_text())["unreadable"]
    assert count >= 1 and f"{count} so far, all replicas" in proc.stderr  # the evaluation reads every file
    assert f"{count} files that failed to decode were skipped" in proc.stdout


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"])
def test_a_checkpoint_that_cannot_be_read_is_one_line_and_exit_2(tmp_path, content):
    """As in torch: an empty or cut OUT/checkpoints/latest.keras-ckpt.npz is the
    user's file to move (it was 'a bug in archc', exit 3)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [8, 8, 3]\nflows:\n  main: [conv: {filters: 2, kernel: 3}, global_avg_pool, dense: 2]\n")
    latest = tmp_path / "run" / "checkpoints" / "latest.keras-ckpt.npz"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(content)
    args = ["train", str(spec), "--backend", "keras", "--data", "synthetic", "--synthetic-samples", "8", "--batch-size", "4"]
    result = subprocess.run([sys.executable, "-m", "archc", *args, "-o", str(tmp_path / "run")], env=ENV, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.splitlines()[-1]  # after TensorFlow's own log lines
    assert last.startswith(f"error: {latest}: expected a checkpoint of archc train, found a file it cannot read (")
    assert last.endswith("); use another --out or --no-resume") and "Traceback" not in result.stderr
    assert latest.read_bytes() == content
