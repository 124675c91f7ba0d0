"""archc's generated Keras models against keras.applications, the same architectures.

For xception and inception_v3_slim: the model that `archc build SPEC --backend keras`
generates, and the reference

  xception           keras.applications.Xception(weights=None, classifier_activation=None)
  inception_v3_slim  keras.applications.InceptionV3(weights=None, classifier_activation=None)

(no softmax on either side: both give logits). Measured, with the two models alternating
(A B A B ...) after warm-up rounds, medians: a training step (a tf.function with
forward, sparse cross-entropy from logits, GradientTape, SGD with momentum 0.9),
inference throughput (a tf.function of model(x, training=False)), and peak memory of
a training step and of an inference batch, in fresh child processes per model (the
peak RSS of the steps over the RSS before them, and the peak of glibc malloc's bytes
in use). Ratios are generated / reference: below 1 the generated model is faster or
smaller. Images are 299x299x3 (channels_last), the specs' input size.

Environment: the project's own (keras 3 and tensorflow-cpu, as `make install` or the
system Python has them); no reference package beyond keras is needed:

  python benchmarks/bench_keras.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import (  # noqa: E402
    MEMORY_METHOD,
    LoadMonitor,
    alternate,
    archc_counts,
    build_generated,
    child_result,
    import_file,
    log,
    machine,
    measure_step_memory,
    median,
    memory_pairs,
    memory_rows,
    run_child,
    stopwatch,
    table,
    time_row,
    today,
    wait_idle,
    write_json,
)

MODELS = ("xception", "inception_v3_slim")
REFERENCE = {
    "xception": "keras.applications.Xception(weights=None, classifier_activation=None)",
    "inception_v3_slim": "keras.applications.InceptionV3(weights=None, classifier_activation=None)",
}
NOTES = {
    "xception": [
        "the same layers in the same order as keras.applications.Xception (Keras's own 'same' padding on both sides); layer names differ",
    ],
    "inception_v3_slim": [
        "the same layers as keras.applications.InceptionV3 (conv without bias, BN without scale, relu); layer names differ",
    ],
}


def setup_tf(threads: int):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def reference_model(model: str):
    import keras

    if model == "xception":
        return keras.applications.Xception(weights=None, classifier_activation=None)
    return keras.applications.InceptionV3(weights=None, classifier_activation=None)


def make_model(model: str, impl: str, generated_file: str | None):
    if impl == "generated":
        return import_file(generated_file).create_model()
    return reference_model(model)


def counts(model) -> tuple[int, int]:
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    frozen = sum(int(v.numpy().size) for v in model.non_trainable_weights)
    return trainable, frozen


def layer_inventory(model) -> Counter[str]:
    inventory: Counter[str] = Counter()
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Activation":
            name = f"Activation({layer.get_config()['activation']})"
        inventory[name] += 1
    return inventory


class Bench:
    """One model with its input, optimizer and compiled steps."""

    def __init__(self, module, args: argparse.Namespace):
        import keras
        import tensorflow as tf

        self.tf = tf
        self.module = module
        height, width, channels = module.input_shape[1:]
        rng = tf.random.Generator.from_seed(0)
        self.x = rng.normal((args.batch, height, width, channels))
        self.y = rng.uniform((args.batch,), 0, 1000, dtype=tf.int32)
        self.xi = rng.normal((args.infer_batch, height, width, channels))
        self.optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
        self.optimizer.build(module.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function(jit_compile=args.xla)
        def train(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, module(x, training=True))
            grads = tape.gradient(loss, module.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, module.trainable_variables))
            return loss

        @tf.function(jit_compile=args.xla)
        def infer(x):
            return module(x, training=False)

        self._train, self._infer = train, infer

    def train_step(self) -> None:
        self._train(self.x, self.y).numpy()

    def infer_step(self) -> None:
        self._infer(self.xi).numpy()

    def timed_train(self) -> float:
        return stopwatch(self.train_step)

    def timed_infer(self) -> float:
        return stopwatch(self.infer_step)


def graph_ops(bench: Bench) -> Counter[str]:
    """Op types of the traced training step (forward, loss, gradients, optimizer update)."""
    graph = bench._train.get_concrete_function(bench.x, bench.y).graph
    return Counter(op.type for op in graph.get_operations())


def memory_child(cfg: dict) -> None:
    setup_tf(cfg["threads"])
    args = argparse.Namespace(**cfg["args"])
    bench = Bench(make_model(cfg["model"], cfg["impl"], cfg["generated_file"]), args)
    # Trace and run the step on two images first (this loads the kernels' code and makes the
    # optimizer's momentum buffers), and trace it for the full batch: the steps are measured,
    # not the tracing.
    full = bench.x, bench.y, bench.xi
    bench.x, bench.y, bench.xi = bench.x[:2], bench.y[:2], bench.xi[:2]
    step = bench.train_step if cfg["mode"] == "train" else bench.infer_step
    step()
    bench.x, bench.y, bench.xi = full
    if cfg["mode"] == "train":
        bench._train.get_concrete_function(bench.x, bench.y)
    else:
        bench._infer.get_concrete_function(bench.xi)
    child_result(measure_step_memory(step, cfg["steps"]))


def measure_memory(model: str, generated_file: str, args: argparse.Namespace) -> dict:
    def measure(impl: str, mode: str) -> dict:
        cfg = {
            "model": model,
            "impl": impl,
            "generated_file": generated_file,
            "mode": mode,
            "threads": args.threads,
            "steps": args.memory_steps,
            "args": {k: getattr(args, k) for k in ("batch", "infer_batch", "xla")},
        }
        return run_child([sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(cfg)])

    return memory_pairs(measure, args.memory_reps, log)


def run_model(model: str, args: argparse.Namespace, out_dir: str) -> dict:
    archc = archc_counts(model)
    generated_file = args.generated.get(model) or str(build_generated(model, "keras", out_dir))
    print(f"\n## {model}\n")
    built = f"archc build specs/{model}.yaml --backend keras" if model not in args.generated else "given with --generated"
    print(f"generated: {generated_file} ({built})")
    print(f"reference: {REFERENCE[model]}")
    modules = {"generated": make_model(model, "generated", generated_file), "reference": reference_model(model)}
    (gt, gn), (rt, rn) = counts(modules["generated"]), counts(modules["reference"])
    print(
        f"parameters: generated {gt:,} trainable + {gn:,} non-trainable, reference {rt:,} + {rn:,} "
        f"(archc: {archc['trainable']:,} + {archc['non_trainable']:,}); output {modules['generated'].output_shape} vs "
        f"{modules['reference'].output_shape}"
    )
    inv = {impl: layer_inventory(m) for impl, m in modules.items()}
    kinds = sorted(set(inv["generated"]) | set(inv["reference"]))
    print("\nlayers by class:\n")
    print(table(["layer", "generated", "reference"], [(k, inv["generated"][k], inv["reference"][k]) for k in kinds]))
    print("\nlike with like:")
    for note in NOTES[model]:
        print(f"- {note}")

    benches = {impl: Bench(m, args) for impl, m in modules.items()}
    ops = {impl: graph_ops(b) for impl, b in benches.items()}
    differ = sorted(k for k in set(ops["generated"]) | set(ops["reference"]) if ops["generated"][k] != ops["reference"][k])
    print(
        f"\ntraced training step (tf.function graph): generated {ops['generated'].total():,} ops, reference "
        f"{ops['reference'].total():,} ops; op types whose counts differ: "
        + (", ".join(f"{k} {ops['generated'][k]} vs {ops['reference'][k]}" for k in differ) or "none")
    )
    result: dict = {"model": model, "generated_file": generated_file, "reference": REFERENCE[model], "counts": archc}
    with LoadMonitor() as load:
        if "train" in args.phases:
            log(f"{model}: training steps, batch {args.batch}")
            result["train"] = alternate(
                {k: b.timed_train for k, b in benches.items()}, args.warmup, args.reps, log if args.verbose else None
            )
        if "infer" in args.phases:
            log(f"{model}: inference, batch {args.infer_batch}")
            result["infer"] = alternate(
                {k: b.timed_infer for k, b in benches.items()}, args.warmup, args.infer_reps, log if args.verbose else None
            )
    result["background_load"] = load.fraction
    del benches, modules
    if "memory" in args.phases:
        log(f"{model}: peak memory")
        result["memory"] = measure_memory(model, generated_file, args)
    report(result, args, load)
    return result


def report(result: dict, args: argparse.Namespace, load: LoadMonitor) -> None:
    macs = result["counts"]["macs"]
    rows = []
    for phase, batch, flops_per_image in (("train", args.batch, 6 * macs), ("infer", args.infer_batch, 2 * macs)):
        if phase not in result:
            continue
        g, r = median(result[phase]["generated"]), median(result[phase]["reference"])
        label = "training step" if phase == "train" else "inference batch"
        rows.append(time_row(f"{label}, batch {batch} (s)", result[phase]["generated"], result[phase]["reference"]))
        rows.append(
            (
                f"  images/s ({phase})",
                f"{batch / g:.1f}",
                f"{flops_per_image * batch / g / 1e12:.3f} TFLOP/s",
                f"{batch / r:.1f}",
                "",
                "",
                "",
            )
        )
    if "memory" in result:
        rows += memory_rows(result["memory"])
    print(
        f"\n{result['model']}: medians of {args.reps} training / {args.infer_reps} inference alternating runs after {args.warmup} warm-up rounds"
    )
    print(load.describe())
    print("MISSED (noise): over the target, but the two sides' spreads (interquartile ranges; min-max under 4 runs) overlap\n")
    print(table(["", "generated", "spread (IQR) / rate", "reference", "spread (IQR)", "gen/ref", "target"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch", type=int, default=8, help="training batch (default 8)")
    parser.add_argument("--infer-batch", type=int, default=8, help="inference batch (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed alternating rounds first (default 2)")
    parser.add_argument("--reps", type=int, default=7, help="timed alternating rounds of training steps (default 7)")
    parser.add_argument("--infer-reps", type=int, default=10, help="timed alternating rounds of inference (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads (default 2)")
    parser.add_argument("--xla", action="store_true", help="jit_compile the tf.functions with XLA (default off, as Keras does on CPU)")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=("train", "infer", "memory"),
        default=["train", "infer", "memory"],
        help="what to measure (default all)",
    )
    parser.add_argument("--memory-steps", type=int, default=2, help="steps each memory child runs (default 2)")
    parser.add_argument("--memory-reps", type=int, default=3, help="memory children per model and mode, alternating; medians (default 3)")
    parser.add_argument(
        "--wait-idle", type=float, default=0, metavar="SECONDS", help="first wait up to this long for other processes to go quiet"
    )
    parser.add_argument(
        "--generated",
        metavar="MODEL=FILE",
        action="append",
        default=[],
        help="benchmark this file instead of building the spec: to try a change to the generated code before changing the templates",
    )
    parser.add_argument("--out-dir", default=None, help="where the generated code goes (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the raw times and results to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timed run on stderr")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.generated = dict(item.split("=", 1) for item in args.generated)
    except ValueError:
        parser.error("--generated: expected MODEL=FILE")
    if set(args.generated) - set(MODELS):
        parser.error(f"--generated: expected a model of {', '.join(MODELS)}")
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return 0

    tf = setup_tf(args.threads)
    import keras

    if args.wait_idle:
        print(wait_idle(args.wait_idle))
    print("# archc generated Keras models vs keras.applications\n")
    print(f"date: {today()}")
    print(f"machine: {machine()}")
    print(
        f"tensorflow {tf.__version__}, keras {keras.__version__} ({keras.backend.backend()} backend); CPU; {args.threads} intra- and "
        f"inter-op threads; fp32; channels_last; XLA {'on' if args.xla else 'off'}"
    )
    print(
        f"training: batch {args.batch}, 299x299, sparse cross-entropy + SGD(momentum 0.9) in a tf.function; inference: batch "
        f"{args.infer_batch}, model(x, training=False) in a tf.function"
    )
    print("timing: generated and reference alternate (A B A B ...) in one process after the warm-up rounds; medians")
    print(
        f"peak memory: {args.memory_reps} fresh child processes per model and mode (alternating) each build the model and "
        f"its input, run a step on two images (loads the kernels' code, makes the momentum buffers), trace the step for the "
        f"full batch, then run {args.memory_steps} steps; reported, medians: {MEMORY_METHOD}"
    )
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="archc-bench-")
    results = [run_model(model, args, out_dir) for model in args.models]
    write_json(args.json, {"date": today(), "machine": machine(), "tensorflow": tf.__version__, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
