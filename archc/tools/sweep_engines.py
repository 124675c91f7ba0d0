"""The engines that run a sweep's trials; each takes the manifest's unfinished trials and
returns one result per trial (``sweep.run_trial``'s), in the trials' order. The local
pool needs nothing; Ray Tune and submitit are optional extras, imported only when chosen.
None schedules by itself beyond what its engine offers: archc plans, the engine runs."""

from __future__ import annotations

import importlib.util
import os
import queue
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archc.syntax.errors import UserError
from archc.tools.sweep import run_trial


@dataclass
class Options:
    """What the engines are told beyond the trials: concurrency and where to run."""

    out: Path
    jobs: int | None = None  # trials at once (None: as the resources allow)
    address: str | None = None  # Ray: a running cluster
    cluster: str = "auto"  # submitit: auto (Slurm when there is one), slurm, local
    partition: str | None = None  # submitit: the Slurm partition
    timeout_min: int = 24 * 60  # submitit: each array task's time limit


Trials = list[dict[str, Any]]
Results = list[dict[str, Any]]


def local(trials: Trials, options: Options) -> Results:
    """A pool of ``jobs`` worker threads, each running one trial's process at a time; with
    GPUs per trial, each worker owns its own GPUs (``CUDA_VISIBLE_DEVICES``)."""
    if not trials:
        return []
    cpus, gpus = trials[0]["resources"]["cpus"], trials[0]["resources"]["gpus"]
    jobs = options.jobs or max(1, (os.cpu_count() or 1) // cpus)
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for slot in range(jobs):
        devices = ",".join(str(slot * gpus + g) for g in range(gpus))
        slots.put({"CUDA_VISIBLE_DEVICES": devices} if gpus else {})

    def one(trial: dict[str, Any]) -> dict[str, Any]:
        env = slots.get()
        try:
            return run_trial(trial, env)
        finally:
            slots.put(env)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, trials))


def _tune_trial(config: dict[str, Any]) -> None:
    """One Ray Tune trial: the trial's command in this Ray worker (which holds the trial's
    CPUs and GPUs); its result reported to Tune, a failed trial raised as Tune's error."""
    from ray import tune

    result = run_trial(config["trial"])
    if result["returncode"] != 0:
        raise RuntimeError(f"{config['trial']['id']}: archc train exited {result['returncode']} (see its trial.log)")
    tune.report(result)


def ray(trials: Trials, options: Options) -> Results:
    """Ray Tune: one Tune trial per sweep trial (a grid over the manifest's trials), each
    with its CPUs and GPUs; local mode (``ray.init(num_cpus=...)``) or ``--address``."""
    import ray as ray_mod
    from ray import tune

    if not trials:
        return []
    cpus, gpus = trials[0]["resources"]["cpus"], trials[0]["resources"]["gpus"]
    if options.address:
        ray_mod.init(address=options.address, include_dashboard=False, log_to_driver=False)
    else:
        ray_mod.init(num_cpus=(options.jobs or max(1, (os.cpu_count() or 1) // cpus)) * cpus, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_tune_trial, {"cpu": cpus, "gpu": gpus}),
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=options.jobs or 0, reuse_actors=True),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(options.out / "ray"), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
            ),
        )
        grid = tuner.fit()
    finally:
        ray_mod.shutdown()
    reported = {r.config["trial"]["id"]: r.metrics or {} for r in grid}
    failed = {"returncode": None}  # a trial Tune ended with an error reports nothing
    return [{"id": t["id"], **(reported[t["id"]] if "returncode" in reported.get(t["id"], {}) else failed)} for t in trials]


def submitit(trials: Trials, options: Options) -> Results:
    """submitit: one job array of all the trials (Slurm, or its local executor), at most
    ``jobs`` tasks at once on Slurm; waits for every task."""
    import submitit as submitit_mod

    if not trials:
        return []
    cpus, gpus = trials[0]["resources"]["cpus"], trials[0]["resources"]["gpus"]
    executor = submitit_mod.AutoExecutor(folder=options.out / "submitit", cluster=None if options.cluster == "auto" else options.cluster)
    parameters: dict[str, Any] = {"name": "archc-sweep", "timeout_min": options.timeout_min, "cpus_per_task": cpus, "nodes": 1}
    parameters.update(tasks_per_node=1, gpus_per_node=gpus, slurm_array_parallelism=options.jobs or len(trials))
    if options.partition:
        parameters["slurm_partition"] = options.partition
    executor.update_parameters(**parameters)
    jobs = executor.map_array(run_trial, trials)
    results = []
    for trial, job in zip(trials, jobs):
        try:
            results.append(job.result())
        except Exception as exc:  # a task that died: the trial is unfinished, not the sweep's bug
            results.append({"id": trial["id"], "returncode": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
    return results


ENGINES: dict[str, Callable[[Trials, Options], Results]] = {"local": local, "ray": ray, "submitit": submitit}
REQUIRES = {"ray": ("ray.tune", "pip install 'archc[ray]' (or 'ray[tune]')"), "submitit": ("submitit", "pip install 'archc[submitit]'")}


def check(engine: str, options: Options) -> None:
    """Before any trial: the engine is installed and a Ray address answers."""
    module, install = REQUIRES.get(engine, (None, ""))
    if module and not _installed(module):
        raise UserError(f"expected the {engine} engine to be installed, found no module '{module}' ({install})")
    if options.address:
        if engine != "ray":
            raise UserError(f"expected --address only with --engine ray, found --engine {engine}")
        _answers(options.address)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _answers(address: str) -> None:
    """A TCP connection to a ``host:port`` or ``ray://host:port`` address (``auto`` is left
    to Ray), so that a wrong address fails in a second, not after Ray's retries."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"expected --address HOST:PORT, ray://HOST:PORT or auto, found '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise UserError(f"expected a Ray cluster answering at {address}, found none ({exc.strerror or exc})") from None


def execute(trials: Trials, engine: str, options: Options, say: Callable[[str], None] = print) -> tuple[Results, float]:
    """Run the trials not finished yet with ``engine``; (their results, the engine's wall
    time). Finished trials are skipped, never rerun; unfinished ones run their command
    again, and the trainer resumes each from its checkpoint."""
    import time

    from archc.tools.sweep import finished

    todo = [t for t in trials if not finished(t)]
    done = len(trials) - len(todo)
    resumed = sum(1 for t in todo if (Path(t["out"]) / "checkpoints").exists())
    say(f"{len(trials)} trials: {done} finished (skipped), {resumed} to resume, {len(todo) - resumed} to start; engine {engine}")
    start = time.time()
    results = ENGINES[engine](todo, options) if todo else []
    return results, time.time() - start
