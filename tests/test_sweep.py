"""`archc sweep`: a 2 x 2-trial sweep of a tiny spec through each engine (the local pool,
Ray Tune in local mode, submitit's local executor), each trial checked to have trained the
variant it claims; a sweep killed mid-way and resumed without rerunning a finished trial;
bad sweeps refused in one line before any trial."""

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
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from archc.cli import main  # noqa: E402
from archc.tools import sweep_engines  # noqa: E402

# Two variants whose weights differ: a trial that trained the other variant (or the
# default) would load neither its weights nor its count.
TINY = """\
name: tiny
input: [16, 16, 3]
params:
  width: {default: 6, min: 1}
  classes: {default: 4, min: 1}
flows:
  main:
    - conv: {filters: $width, kernel: 3, padding: same}
    - bn
    - act: relu
    - global_avg_pool
    - dense: {units: $classes}
"""
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TRAIN = ["--data", "synthetic", "--val-data", "synthetic", "--synthetic-samples", "32", "--batch-size", "8", "--lr", "0.01"]


def archc_sweep(spec: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "archc", "sweep", str(spec), "--sweep", "width=4,8", "-o", str(out), *args]


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def trained_count(folder: Path) -> int:
    """Trainable parameters of the model a trial's folder holds, with its final weights loaded."""
    from archc.codegen.backend import get

    model = get("torch").load(next((folder / "model").glob("*_torch.py"))).create_model()
    model.load_state_dict(torch.load(folder / "final.pt", weights_only=True))  # strict: the shapes are the variant's
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "engine, extra",
    [("local", []), ("ray", ["--jobs", "2", "--cpus-per-trial", "1"]), ("submitit", ["--cluster", "local"])],
)
def test_each_engine_trains_every_trial_as_the_variant_it_claims(tmp_path, engine, extra):
    if engine != "local":
        pytest.importorskip({"ray": "ray.tune", "submitit": "submitit"}[engine])
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    cmd = archc_sweep(spec, out, "--seeds", "2", "--engine", engine, *extra, *TRAIN, "--epochs", "2", "--log-every", "2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"4 trials: 0 finished (skipped), 0 to resume, 4 to start; engine {engine}" in proc.stdout

    table = {r["variant"]: r for r in rows(out / "sweep.csv")}
    assert sorted((r["width"], r["seeds"]) for r in table.values()) == [("4", "2"), ("8", "2")]
    assert table["tiny__width-4"]["trainable"] != table["tiny__width-8"]["trainable"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(t["params"], t["seed"]) for t in manifest["trials"]] == [({"width": w}, s) for w in (4, 8) for s in (0, 1)]
    for trial in manifest["trials"]:
        folder = Path(trial["out"])
        run = json.loads((folder / "run.json").read_text())
        assert run["params"]["width"] == trial["params"]["width"]  # the run folder records its variant's params
        assert trained_count(folder) == int(table[trial["variant"]]["trainable"])
        assert json.loads((folder / "result.json").read_text())["returncode"] == 0
    per_trial = rows(out / "trials.csv")
    assert len(per_trial) == 4 and all(r["finished"] == "True" and 0 <= float(r["final_top1"]) <= 1 for r in per_trial)
    for name in ("sweep.md", "profiles.png", "accuracy_vs_macs.png"):
        assert (out / name).stat().st_size > 0
    assert "± " in (out / "sweep.md").read_text()  # two seeds: a spread


def test_a_killed_sweep_resumes_without_rerunning_a_finished_trial(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    args = [*TRAIN, "--epochs", "25", "--log-every", "4", "--checkpoint-every", "4", "--jobs", "1"]
    first, second = (out / "trials" / f"tiny__width-{w}__seed-0" for w in (4, 8))
    log = open(tmp_path / "killed.log", "w")  # a file, not a pipe nobody reads
    proc = subprocess.Popen(archc_sweep(spec, out, *args), stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((first / "result.json").exists() and (second / "checkpoints" / "latest.pt").exists()):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial it is running
        proc.wait()
        log.close()
    assert not (second / "result.json").exists()
    finished_result = (first / "result.json").read_text()
    finished_log = (first / "trial.log").read_text()

    again = subprocess.run(archc_sweep(spec, out, *args), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials: 1 finished (skipped), 1 to resume, 0 to start" in again.stdout
    assert (first / "result.json").read_text() == finished_result  # not rerun
    assert (first / "trial.log").read_text() == finished_log
    attempts = (second / "trial.log").read_text()
    assert sum(line.startswith("== ") for line in attempts.splitlines()) == 2 and "resuming from" in attempts  # the trainer resumed it
    steps = [int(r["step"]) for r in rows(second / "metrics.csv")]
    assert steps == list(range(4, steps[-1] + 1, 4)) and steps[-1] == 100  # no step logged twice, none missing
    assert [r["seeds"] for r in rows(out / "sweep.csv")] == ["1", "1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sweep", "depth=1,2"], "expected a declared param (known: width, classes), found 'depth'"),
        (["--sweep", "width=4,0"], "params.width: expected at least 1, found 0"),
        (["--sweep", "width=4", "--engine", "ray", "--address", "127.0.0.1:1"], "expected a Ray cluster answering at 127.0.0.1:1"),
        (["--sweep", "width=4", "--seed", "1"], "expected train options without --seed"),
        (["--sweep", "width=4", "--epochz", "1"], "No such option '--epochz'"),
        (["--sweep", "width=4", "-p", "width=5"], "expected each param either swept or set with -p, found 'width' both"),
    ],
)
def test_a_bad_sweep_is_one_line_and_exit_2_before_any_trial(tmp_path, args, message):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(spec), "-o", str(out), *args, "--data", "synthetic"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output
    assert not out.exists()


def test_an_engine_that_is_not_installed_is_refused_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.setitem(sweep_engines.REQUIRES, "submitit", ("archc_tests_no_such_module", "pip install 'archc[submitit]'"))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    result = CliRunner().invoke(
        main, ["sweep", str(spec), "--sweep", "width=4", "-o", str(tmp_path / "s"), "--engine", "submitit", "--data", "synthetic"]
    )
    assert result.exit_code == 2
    assert result.output == (
        "error: expected the submitit engine to be installed, found no module 'archc_tests_no_such_module' (pip install 'archc[submitit]')\n"
    )
    assert not (tmp_path / "s").exists()


def test_dry_run_writes_only_the_manifest_a_sweep_grows_and_a_changed_command_is_refused(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--sweep", "width=4,8", "--seeds", "3", "-o", str(out), "--dry-run", *TRAIN])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["trials"]) == 6 and manifest["seeds"] == [0, 1, 2]
    trial = manifest["trials"][5]
    assert trial["resources"] == {"cpus": 1, "gpus": 0}
    assert trial["command"][2:5] == ["archc", "train", str(spec.resolve())]
    assert trial["command"][5:] == ["-p", "width=8", "--seed", "2", "-o", trial["out"], *TRAIN]
    assert [v["trainable"] for v in manifest["variants"]] == [4 * 27 + 4 + 8 + 4 * 4 + 4, 8 * 27 + 8 + 16 + 8 * 4 + 4]
    more = CliRunner().invoke(main, ["sweep", str(spec), "--sweep", "width=4,8,16", "--seeds", "4", "-o", str(out), "--dry-run", *TRAIN])
    assert more.exit_code == 0, more.output  # more values and seeds join the sweep
    assert len(json.loads((out / "manifest.json").read_text())["trials"]) == 12
    other = CliRunner().invoke(main, ["sweep", str(spec), "--sweep", "width=4", "-o", str(out), "--dry-run", *TRAIN, "--epochs", "3"])
    assert other.exit_code == 2, other.output
    assert "expected trial tiny__width-4__seed-0 to keep its command to resume, found another one" in other.output


@pytest.mark.parametrize(
    "text, found",
    [
        ("{not json", "found no JSON (Expecting property name"),
        ("[1]", "found JSON without its trials"),
        ('{"trials": [1]}', "without its trials"),
    ],
)
def test_an_out_folder_with_a_file_there_that_is_no_manifest_is_one_line_and_exit_2(tmp_path, text, found):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--sweep", "width=4", "-o", str(out), "--dry-run", *TRAIN])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(
        f"error: {out / 'manifest.json'}: expected the manifest of an earlier sweep"
    )
    assert found in result.output and result.output.endswith("; use another -o\n")
    assert (out / "manifest.json").read_text() == text  # left as it was


@pytest.mark.parametrize("text", ["", "{trunc", "[0]", '{"returncode": 0}'])
def test_a_result_that_is_no_json_object_leaves_its_trial_unfinished(tmp_path, text):
    from archc.tools.sweep import finished
    from archc.tools.sweep_report import trial_row

    (tmp_path / "result.json").write_text(text)
    trial = {"id": "t", "variant": "v", "seed": 0, "out": str(tmp_path)}
    assert finished(trial) == trial_row(trial)["finished"] == (text == '{"returncode": 0}')


def test_an_out_folder_under_a_file_is_one_line_and_exit_2(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--sweep", "width=4", "-o", str(out), "--dry-run", *TRAIN])
    assert (result.exit_code, result.output) == (2, f"error: -o {out}: expected a folder archc sweep can write, found Not a directory\n")


def test_a_trial_with_several_gpus_runs_under_torchrun(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "sweep"
    args = ["sweep", str(spec), "--sweep", "width=4", "-o", str(out), "--gpus-per-trial", "2", "--cpus-per-trial", "8", "--dry-run", *TRAIN]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (trial,) = json.loads((out / "manifest.json").read_text())["trials"]
    assert trial["resources"] == {"cpus": 8, "gpus": 2}
    assert trial["command"][1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "archc", "train"]
