"""The training loop both trainers run, with no deep-learning framework: the run's header
and ``OUT/run.json``, resuming from ``OUT/checkpoints/latest``, the cadence of logs,
checkpoints and evaluations, stopping with a checkpoint on SIGTERM, each process's digests in ``OUT/ranks/`` and the final
weights. A trainer supplies an :class:`Engine`: its model, optimizer, distributed step
and file formats. Keeping the loop here makes a step, a log line, a checkpoint and a
resume mean the same thing in both backends.

Every process of a run calls the loop; the engine's methods marked *collective* below are
called at the same steps on every process (they may all-reduce), the main process alone
logs and writes the shared files.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from archc.ir.recipe import Training
from archc.training.kit import (
    MetricLog,
    Prepared,
    Schedule,
    Throughput,
    checkpoint_path,
    remove_stale_temporaries,
    run_info,
    run_signature,
    tensorboard,
    write_json,
)


class Engine(Protocol):
    """What a trainer gives the loop: one framework's model, step and files."""

    kind: str  # run.json's "engine", e.g. "torch/ddp"
    replicas: int  # data-parallel replicas: the global batch is the recipe's batch x replicas
    is_main: bool  # this process logs and writes checkpoints and final weights
    rank_name: str  # this process's digests go to OUT/ranks/<rank_name>.json
    checkpoint_suffix: str  # OUT/checkpoints/latest<suffix>
    unreadable: int  # this process's files that failed to decode during the run, skipped

    def describe(self) -> str:
        """The run header's words after the model file: framework, devices, precision."""
        ...

    def restore(self, path: Path, signature: dict[str, Any]) -> int:
        """Load the checkpoint at ``path`` (refused unless its signature matches,
        :func:`archc.training.kit.check_resumable`); return the steps it holds."""
        ...

    def batches(self, start: int, total: int) -> Iterable[Any]:
        """This process's batches of steps ``start..total-1``, one item per step."""
        ...

    def step(self, batch: Any) -> None:
        """One optimizer step on ``batch`` (collective); the loss joins the log window."""
        ...

    def mean_loss(self) -> float:
        """The mean loss of the steps since the last call, over all replicas (collective)."""
        ...

    def save(self, path: Path, signature: dict[str, Any], step: int) -> None:
        """Checkpoint ``step`` steps done to ``path`` (collective; the main process writes)."""
        ...

    def evaluate(self) -> tuple[str, float, float, int] | None:
        """(weights evaluated: "ema" or "live", loss, top-1, samples) on the validation
        data (collective), or ``None`` on a process that does not hold the result."""
        ...

    def digests(self) -> dict[str, str | None]:
        """The final model's digests: "params", "state", "ema" (collective: the replicas'
        statistics are averaged first, so that every process holds the same model)."""
        ...

    def save_final(self, out: Path) -> Path:
        """Write the final weights under ``out`` (main process); return the file to use."""
        ...

    def barrier(self) -> None:
        """Wait for every process (collective): none leaves while the main one writes."""
        ...

    def agree(self, stop: bool) -> bool:
        """Whether any process asks to stop (collective, every step): every replica then
        stops after the same step."""
        ...


class StopRequest:
    """SIGTERM, what Slurm (and torchrun, and Kubernetes) send before they end a job, asks
    the run to stop: the loop checkpoints after the step under way and returns, and the
    same command resumes. Installed only in the main thread, where Python runs handlers;
    the previous handler is back afterwards."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def train(prepared: Prepared, schedule: Schedule, engine: Engine) -> None:
    """Run ``prepared``'s recipe with ``engine``: resume, step, log, checkpoint, evaluate,
    then write the digests and the final weights."""
    config = prepared.config
    total = schedule.total_steps(config.max_steps)
    signature = run_signature(prepared, engine.replicas)
    ckpt = checkpoint_path(config.out, engine.checkpoint_suffix)
    with StopRequest() as stop:
        step = engine.restore(ckpt, signature) if config.resume and ckpt.exists() else 0
        log = open_log(prepared, schedule, engine, ckpt, step, total) if engine.is_main else None
        step = run_steps(prepared, schedule, engine, log, signature, ckpt, step, total, stop)
    if step < total:  # stopped by SIGTERM, checkpointed
        if log is not None:
            log.echo(f"stopped by SIGTERM after step {step} of {total}; checkpoint {ckpt}; the same command resumes")
            log.close()
        engine.barrier()
        return
    finish(config.out, engine, log, step)


def open_log(prepared: Prepared, schedule: Schedule, engine: Engine, ckpt: Path, step: int, total: int) -> MetricLog:
    """The main process's log, after the header lines and ``OUT/run.json``."""
    config = prepared.config
    remove_stale_temporaries(ckpt.parent)
    log = MetricLog(config.out, step, tensorboard(config.out))
    log.echo(f"archc train: {prepared.analysis.net.name} ({prepared.model_file}), {engine.describe()}")
    log.echo(f"{prepared.train.describe()}; {schedule.steps_per_epoch} steps an epoch, {total} steps")
    if prepared.analysis.net.training is None:
        log.echo(f"recipe: the default (the spec has no training: section; see docs/training.md): {describe_recipe(prepared.training)}")
    if step:
        log.echo(f"resuming from {ckpt} at step {step}")
    write_json(Path(config.out) / "run.json", run_info(prepared, schedule, total, engine.kind))
    return log


def run_steps(
    prepared: Prepared,
    schedule: Schedule,
    engine: Engine,
    log: MetricLog | None,
    signature,
    ckpt: Path,
    step: int,
    total: int,
    stop: StopRequest | None = None,
) -> int:
    """Steps ``step..total-1``: a log line every ``--log-every`` steps, a checkpoint every
    ``--checkpoint-every`` steps and at the end of each epoch, an evaluation at the end of
    each epoch; the last step does all three. A stop request (any process's) ends the run
    after the step under way, with a checkpoint. Returns the steps done."""
    config = prepared.config
    per_epoch = schedule.steps_per_epoch
    meter = Throughput()
    for batch in engine.batches(step, total):
        engine.step(batch)
        step += 1
        meter.add(schedule.global_batch)
        end_of_epoch = step % per_epoch == 0
        if step % config.log_every == 0 or step == total:
            loss = engine.mean_loss()  # the one host sync, every --log-every steps
            rate, elapsed = meter.report()  # after the sync: the window's work is done
            if log is not None:
                log.train(
                    step, step / per_epoch, step * schedule.global_batch, loss, schedule.learning_rate(step - 1), rate, elapsed, total
                )
        stopping = step < total and engine.agree(stop is not None and stop.received)
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or end_of_epoch or step == total or stopping:
            engine.save(ckpt, signature, step)
        if stopping:
            return step
        if prepared.val is not None and (end_of_epoch or step == total):
            result = engine.evaluate()
            if log is not None and result is not None:
                log.evaluation(step, step / per_epoch, *result)
    return step


def finish(out: str | Path, engine: Engine, log: MetricLog | None, step: int) -> None:
    """Every process's digests, then the main process's final weights."""
    out = Path(out)
    digests = engine.digests()
    skipped = {"unreadable": engine.unreadable} if engine.unreadable else {}
    write_json(out / "ranks" / f"{engine.rank_name}.json", {"step": step, **skipped, **digests})
    if log is not None:
        weights = engine.save_final(out)
        unread = f"; {engine.unreadable} files that failed to decode were skipped (OUT/ranks/ has the counts)" if engine.unreadable else ""
        log.echo(f"done: {step} steps; weights in {weights}{unread}")
        log.close()
    engine.barrier()


def describe_recipe(training: Training) -> str:
    """The recipe in one line: optimizer, learning rate and its decay, batch, epochs."""
    lr = training.learning_rate
    decay = f", x{lr.decay:g} every {lr.every_epochs:g} epochs" if lr.decay < 1 and lr.every_epochs else ""
    decay = decay or (f", x{lr.decay:g} every {lr.every_samples} samples" if lr.decay < 1 else "")
    return (
        f"{training.optimizer.kind} (momentum {training.optimizer.momentum:g}), learning rate {lr.initial:g}{decay}, "
        f"weight decay {training.weight_decay:g}, {training.batch_size} images a replica, {training.epochs:g} epochs"
    )
