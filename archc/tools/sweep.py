"""``archc sweep``: the cartesian product of swept param values times seeds, each trial a
real ``archc train`` of its variant. The plan is a manifest of trials (variant, params,
seed, command, resources) written before anything runs; an engine (``sweep_engines``:
a local process pool, Ray Tune, submitit) runs the manifest's unfinished trials, and
``sweep_report`` turns the run folders into the comparison. A trial is finished when
its ``result.json`` says it exited 0; anything else runs again, and the trainer resumes
it from its own checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.syntax.errors import UserError
from archc.tools import variants as variants_mod

MANIFEST = "manifest.json"
RESULT = "result.json"  # written into a trial's folder when its command exits 0
LOG = "trial.log"  # the trial's stdout and stderr, every attempt appended

# Train options the sweep sets itself for each trial.
OWNED = ("-o", "--out", "--seed")


@dataclass
class Resources:
    cpus: int = 1
    gpus: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"cpus": self.cpus, "gpus": self.gpus}


@dataclass
class Plan:
    """What ``archc sweep`` will run: the variants with their counts, and the trials."""

    spec: Path
    out: Path
    names: list[str]  # swept params, in --sweep order
    seeds: list[int]
    variants: list[variants_mod.Variant]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        rows = [
            {"name": v.name, "params": _plain(v.values), **_counts(v), "status": "ok" if v.analysis else f"invalid: {v.reason}"}
            for v in self.variants
        ]
        return {"spec": str(self.spec), "swept": self.names, "seeds": self.seeds, "variants": rows, "trials": self.trials}


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, bool | int | float | str) or v is None else str(v) for k, v in values.items()}


def _counts(variant: variants_mod.Variant) -> dict[str, int | None]:
    total = variant.analysis.total if variant.analysis else None
    return {k: getattr(total, k) if total else None for k in ("trainable", "non_trainable", "macs")}


def param_text(value: Any) -> str:
    """A typed param value as ``-p`` spells it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_train_args(args: Sequence[str]) -> None:
    """The options a sweep sets itself are refused in the forwarded train options."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in OWNED or (name.startswith("-o") and not name.startswith("--") and len(name) > 2):
            raise UserError(f"expected train options without {name} (the sweep sets each trial's --out and --seed), found '{arg}'")


def absolute_data(args: Sequence[str]) -> list[str]:
    """``--data``/``--val-data`` folders as absolute paths: trials run in their own folders."""
    out, previous = [], ""
    for arg in args:
        if previous in ("--data", "--val-data") and arg != "synthetic":
            arg = str(Path(arg).resolve())
        elif arg.startswith(("--data=", "--val-data=")):
            name, value = arg.split("=", 1)
            arg = f"{name}={value if value == 'synthetic' else Path(value).resolve()}"
        out.append(arg)
        previous = arg
    return out


def launcher(gpus: int) -> list[str]:
    """The trial's process: ``archc train``, under torchrun with one process per GPU when a
    trial has more than one (DistributedDataParallel, as docs/training.md runs it)."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "archc", "train"]
    return [sys.executable, "-m", "archc", "train"]


def plan(
    spec: str | Path,
    sweeps: Mapping[str, list[str]],
    seeds: int,
    out: str | Path,
    overrides: Mapping[str, str] | None = None,
    train_args: Sequence[str] = (),
    resources: Resources | None = None,
    input_size: tuple[int, int] | None = None,
) -> Plan:
    """Every variant (checked as ``archc variants`` checks it) times ``seeds`` seeds, one
    trial each; an invalid combination is listed with its reason and gets no trial."""
    resources = resources or Resources()
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(sweeps))
    if clash:
        raise UserError(f"expected each param either swept or set with -p, found '{clash[0]}' both")
    check_train_args(train_args)
    result = variants_mod.run(spec, sweeps, overrides, input_size=input_size)
    out = Path(out).resolve()
    found = Plan(Path(spec), out, list(sweeps), list(range(seeds)), result.variants)
    fixed = [a for k, v in overrides.items() for a in ("-p", f"{k}={v}")]
    for variant in result.variants:
        if variant.analysis is None:
            continue
        swept = [a for k, v in variant.values.items() for a in ("-p", f"{k}={param_text(v)}")]
        for seed in found.seeds:
            trial_id = f"{variant.name}__seed-{seed}"
            folder = out / "trials" / trial_id
            command = [*launcher(resources.gpus), str(Path(spec).resolve()), *fixed, *swept]
            command += ["--seed", str(seed), "-o", str(folder), *absolute_data(train_args)]
            found.trials.append(
                {
                    "id": trial_id,
                    "variant": variant.name,
                    "params": _plain(variant.values),
                    "seed": seed,
                    "out": str(folder),
                    "command": command,
                    "resources": resources.as_dict(),
                }
            )
    if not found.trials:
        raise UserError(f"expected at least one valid variant to train, found none ({result.variants[0].reason})")
    return found


def write_manifest(found: Plan) -> Path:
    """``OUT/manifest.json``. A sweep may be run again with more seeds or values (its new
    trials join the folder), but a trial whose command changed (other train options or
    fixed params) is refused: its folder holds a run of the old command."""
    from archc.syntax.errors import make_out

    make_out(found.out, "archc sweep")
    path = found.out / MANIFEST
    manifest = found.manifest()
    if path.exists():
        before = {t["id"]: t["command"] for t in _earlier_trials(path)}
        changed = [t["id"] for t in manifest["trials"] if before.get(t["id"], t["command"]) != t["command"]]
        if changed:
            raise UserError(f"{path}: expected trial {changed[0]} to keep its command to resume, found another one; use another -o")
    write_json(path, manifest)
    return path


def _earlier_trials(path: Path) -> list[dict[str, Any]]:
    """The trials of the manifest an earlier sweep wrote at ``path``; a file there that is
    no such manifest (edited, or another tool's) is the user's to move, not a bug."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: expected the manifest of an earlier sweep, found no JSON ({exc}); use another -o") from None
    trials = data.get("trials", []) if isinstance(data, dict) else None
    if isinstance(trials, list) and all(isinstance(t, dict) and isinstance(t.get("id"), str) and "command" in t for t in trials):
        return trials
    raise UserError(
        f"{path}: expected the manifest of an earlier sweep, found JSON without its trials (each an id and a command); use another -o"
    )


def read_result(path: Path) -> dict[str, Any]:
    """A trial's ``result.json``; {} when there is none or it is no JSON object (then the
    trial counts as unfinished and runs again, which rewrites it)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a temporary file moved over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def finished(trial: Mapping[str, Any]) -> bool:
    return read_result(Path(trial["out"]) / RESULT).get("returncode") == 0


def run_trial(trial: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one trial's command (every engine calls this, in whatever process it gives the
    trial), its output appended to ``trial.log``; ``result.json`` when it exits 0."""
    out = Path(trial["out"])
    out.mkdir(parents=True, exist_ok=True)
    threads = str(trial["resources"]["cpus"])
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.time()
    with open(out / LOG, "ab") as log:
        newline = "\n" if _mid_line(out / LOG) else ""  # after a killed attempt's last line
        log.write(f"{newline}== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(trial['command'])}\n".encode())
        log.flush()
        code = subprocess.run(trial["command"], stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=out).returncode
    end = time.time()
    result = {
        "id": trial["id"],
        "returncode": code,
        "wall_s": round(end - start, 3),
        "start": start,
        "end": end,
        "host": os.uname().nodename,
    }
    if code == 0:
        write_json(out / RESULT, result)
    return result


def _mid_line(path: Path) -> bool:
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"
