"""``archc train --backend keras``: the spec's recipe under tf.distribute.

One process per host. Without ``TF_CONFIG`` the run uses ``MirroredStrategy`` (every
local GPU, or the CPU); with a ``TF_CONFIG`` naming more than one task it uses
``MultiWorkerMirroredStrategy`` (synchronous, collective all-reduce across hosts). The
same command runs in both cases; docs/training.md shows the launch lines.

The recipe, made explicit (the same numbers as the torch trainer, see archc.training.kit):

- loss: softmax cross-entropy with the recipe's label smoothing, averaged over the
  global batch (each replica's sum divided by the global batch; gradients summed by the
  optimizer's all-reduce);
- weight decay: L2 on every trainable tensor of two or more dimensions (conv, separable
  and dense kernels; never biases or BN gamma/beta), the convention of Keras'
  ``kernel_regularizer=l2(wd)``: ``wd * sum(w**2)`` added to the loss, applied as its
  gradient ``2 * wd * w`` (divided by the replicas, whose gradients are summed);
- learning rate: :class:`StaircaseDecay`, the step's rate from
  :func:`archc.ir.recipe.learning_rate_at` computed on the optimizer's step counter;
- EMA (Polyak averaging): the optimizer's own ``use_ema=True, ema_momentum=decay`` (the
  first step copies the weights); evaluation and the ``final_ema`` weights use it, with
  the live BN statistics;
- BN moving statistics are updated by each replica from its own batches (tf.distribute's
  behaviour); before every checkpoint, evaluation and at the end they are averaged over
  the replicas, so that every worker holds the same model.

Only the chief (worker 0) logs, writes checkpoints and evaluates; every worker reads the
checkpoint to resume, so OUT must be on storage all hosts share.

The loop itself (resume, the cadence of logs, checkpoints and evaluations, digests, final
files) is :func:`archc.training.loop.train`'s; this module holds the data pipeline and
:class:`KerasEngine`, the framework's side of each step.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from archc.syntax.errors import UserError
from archc.training import kit, loop

CHECKPOINT_SUFFIX = ".keras-ckpt.npz"


def _import_tf(config: kit.RunConfig):
    backend = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        raise UserError(f"KERAS_BACKEND: expected 'tensorflow' (tf.distribute trains the keras backend), found {backend!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if config.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    return tf


def make_strategy(tf):
    """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, else MirroredStrategy.
    Must run before any other TensorFlow op (a collective strategy's requirement)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    tasks = sum(len(v) for k, v in tf_config.get("cluster", {}).items() if k in ("chief", "worker"))
    if tasks > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        kind, index = resolver.task_type, resolver.task_id
        has_chief = "chief" in tf_config.get("cluster", {})
        is_chief = kind == "chief" or (kind == "worker" and index == 0 and not has_chief)
        return strategy, f"{kind}-{index}", is_chief
    return tf.distribute.MirroredStrategy(), "worker-0", True


def staircase_schedule_class():
    import keras

    @keras.saving.register_keras_serializable(package="archc")
    class StaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
        """:func:`archc.ir.recipe.learning_rate_at` of the optimizer's step: the staircase
        exponential decay ``initial * decay ** floor(samples / period)`` with samples =
        step x global batch (float64, exact far beyond ImageNet-scale runs), and the
        optional linear warm-up."""

        def __init__(self, initial, decay, period_samples, warmup_samples, global_batch):
            self.initial = float(initial)
            self.decay = float(decay)
            self.period_samples = None if period_samples is None else float(period_samples)
            self.warmup_samples = float(warmup_samples)
            self.global_batch = int(global_batch)

        def __call__(self, step):
            import tensorflow as tf

            samples = tf.cast(step, tf.float64) * self.global_batch
            rate = tf.constant(self.initial, tf.float64)
            if self.period_samples is not None:
                rate = rate * tf.pow(tf.constant(self.decay, tf.float64), tf.floor(samples / self.period_samples))
            if self.warmup_samples > 0:
                rate = rate * tf.minimum(1.0, (samples + self.global_batch) / self.warmup_samples)
            return tf.cast(rate, tf.float32)

        def get_config(self):
            return {
                "initial": self.initial,
                "decay": self.decay,
                "period_samples": self.period_samples,
                "warmup_samples": self.warmup_samples,
                "global_batch": self.global_batch,
            }

    return StaircaseDecay


def make_schedule(schedule: kit.Schedule):
    from archc.ir.recipe import decay_period

    lr = schedule.training.learning_rate
    return staircase_schedule_class()(
        lr.initial,
        lr.decay,
        decay_period(lr, schedule.samples_per_epoch),
        lr.warmup_epochs * schedule.samples_per_epoch,
        schedule.global_batch,
    )


def warm_ema(optimizer_class):
    """``optimizer_class`` whose EMA (``use_ema``) has the warm-up of
    :func:`archc.ir.recipe.ema_decay_at`: Keras' own update uses ``ema_momentum`` from the
    second step on. The update runs before the step counter moves, so the step done is
    ``iterations + 1``; the averages start from the initial weights (:func:`start_ema`)."""

    class WarmEMA(optimizer_class):
        def _update_model_variables_moving_average(self, trainable_variables):
            from keras import ops

            step = ops.cast(self.iterations + 1, "float32")
            keep = ops.minimum(self.ema_momentum, (1 + step) / (10 + step))
            for var, average in zip(trainable_variables, self._model_variables_moving_average):
                if average is not None:
                    average.assign(keep * average + (1 - keep) * var)

    WarmEMA.__name__ = WarmEMA.__qualname__ = f"WarmEMA{optimizer_class.__name__}"
    return WarmEMA


def make_optimizer(training, learning_rate):
    import keras

    opt = training.optimizer
    ema = {"use_ema": training.ema is not None, "ema_momentum": training.ema.decay if training.ema else 0.99}
    if opt.kind == "sgd":
        return warm_ema(keras.optimizers.SGD)(learning_rate=learning_rate, momentum=opt.momentum, nesterov=opt.nesterov, **ema)
    return warm_ema(keras.optimizers.RMSprop)(learning_rate=learning_rate, rho=opt.rho, momentum=opt.momentum, epsilon=opt.epsilon, **ema)


def start_ema(model, optimizer) -> None:
    """The EMA starts from the initial weights (Keras' starts from zeros and copies the
    weights at the first step)."""
    if optimizer.use_ema:
        for var, average in zip(model.trainable_variables, optimizer._model_variables_moving_average):
            average.assign(var)


def tf_random_box(tf, height, width, draw, area, aspect):
    """:func:`archc.training.kit.random_box` in TensorFlow ops, the same float64 arithmetic and
    roundings (half to even): the same boxes as the torch trainer for the same draws."""
    h_full, w_full = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    draw = tf.cast(draw, tf.float64)
    fraction = area[0] + draw[0] * (area[1] - area[0])
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    ratio = tf.exp(log_low + draw[1] * (log_high - log_low))
    pixels = fraction * h_full * w_full
    w, h = tf.sqrt(pixels * ratio), tf.sqrt(pixels / ratio)
    one = tf.constant(1.0, tf.float64)
    fit = tf.minimum(tf.minimum(one, w_full / w), h_full / h)
    w = tf.minimum(w_full, tf.maximum(one, tf.round(w * fit)))
    h = tf.minimum(h_full, tf.maximum(one, tf.round(h * fit)))
    top, left = tf.floor(draw[2] * (h_full - h + 1)), tf.floor(draw[3] * (w_full - w + 1))
    return tf.cast(tf.stack([top, left, h, w]), tf.int32)


def tf_central_box(tf, height, width, fraction):
    """:func:`archc.training.kit.central_box` (``tf.image.central_crop``'s box) in TensorFlow ops."""
    size = tf.cast(tf.stack([height, width]), tf.float64)
    start = tf.cast((size - size * fraction) / 2, tf.int32)
    return tf.concat([start, tf.stack([height, width]) - 2 * start], 0)


def _jpeg_sizes(tf, files):
    """(height, width) of the JPEGs among ``files``, from their headers."""
    sizes = []
    with tf.init_scope():  # eager, even while a strategy builds the pipeline inside a graph
        for path in files:
            try:
                data = tf.io.read_file(path)
                if bool(tf.io.is_jpeg(data)):
                    height, width = tf.io.extract_jpeg_shape(data)[:2].numpy().tolist()
                    sizes.append((height, width))
            except tf.errors.OpError:
                pass  # the pipeline reports it
    return sizes


def _images(tf, source, training, index, flipped, draws, fraction):
    """Images ``index`` of a folder as a tf.data pipeline of (uint8 image, label), in order:
    the random crop of ``draws`` (training) or the central ``fraction`` (evaluation; 1: the
    whole image), resized (bilinear; antialiased when shrinking by 2 or more) to the input,
    flipped where ``flipped``. JPEGs are decoded only inside the box
    (``decode_and_crop_jpeg``), at reduced size where the box allows."""
    import numpy as np

    h, w, c = source.height, source.width, source.channels
    files = tf.constant(source.files)
    labels = tf.constant(source.labels, tf.int32)
    augment = training.augment
    crop = draws is not None and augment is not None
    draws = np.zeros((len(index), 4)) if draws is None else draws

    # tf.cond and tf.switch_case cost about 0.3 ms an image each here (a third of a small
    # JPEG's decode), so the pipeline has them only where they can matter: the format
    # check only when some file is not named .jpg/.jpeg, the reduced-size decode only
    # when some of the first images are at least twice the input on both sides; the
    # per-image choices (ratio, antialiasing, flip) route by Switch/Merge, which is cheaper
    all_jpeg = all(f.lower().endswith((".jpg", ".jpeg")) for f in source.files)
    reduce = any(min(fh // h, fw // w) >= 2 for fh, fw in _jpeg_sizes(tf, source.files[:8]))
    any_flip = bool(np.any(flipped))

    def box_of(size, draw):
        if crop and fraction is None:
            return tf_random_box(tf, size[0], size[1], draw, augment.crop_area, augment.crop_aspect)
        return tf_central_box(tf, size[0], size[1], 1.0 if fraction is None else fraction)

    def load(path, label, flip, draw):
        data = tf.io.read_file(path)

        def jpeg():
            size = tf.io.extract_jpeg_shape(data)[:2]
            return _decode_jpeg_box(tf, data, size, box_of(size, draw), h, w, c, reduce)

        def other():
            image = tf.io.decode_image(data, channels=c, expand_animations=False)
            top, left, bh, bw = tf.unstack(box_of(tf.shape(image)[:2], draw))
            return image[top : top + bh, left : left + bw]

        image = jpeg() if all_jpeg else tf.cond(tf.io.is_jpeg(data), jpeg, other)
        image.set_shape((None, None, c))
        image = _resize(tf, image, h, w)
        if any_flip:
            keep, turn = tf.raw_ops.Switch(data=image, pred=flip)  # only flipped images are copied
            image = tf.raw_ops.Merge(inputs=[keep, tf.reverse(turn, [1])]).output
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((tf.gather(files, index), tf.gather(labels, index), flipped, draws)).enumerate()
    ds = ds.map(lambda k, item: (*load(*item), k), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _skip_unreadable(tf, ds)


def _skip_unreadable(tf, ds):
    """(image, label, k) elements -> (image, label, files skipped just before it): an image
    that fails to decode during the run (it passed the check before step 1) is dropped
    (tf.data's ``ignore_errors``), and the gap in the positions ``k`` counts it."""

    def gap(previous, element):
        image, label, k = element
        return k, (image, label, k - previous - 1)

    return ds.ignore_errors().scan(tf.constant(-1, tf.int64), gap)


_FAST_JPEG = dict(fancy_upscaling=False, dct_method="INTEGER_FAST")


def _decode_jpeg_box(tf, data, size, box, h, w, c, reduce):
    """The region ``box`` of the JPEG ``data`` (of ``size``) as uint8, decoded at 1/2, 1/4
    or 1/8 (libjpeg's DCT scaling) while the box still covers the h x w input at that
    scale when ``reduce``, the box cut out on the reduced image's pixels."""
    if not reduce:
        return tf.io.decode_and_crop_jpeg(data, box, channels=c, **_FAST_JPEG)
    covers = tf.minimum(box[2] // h, box[3] // w)
    scale = tf.reduce_sum(tf.cast(covers >= tf.constant([2, 4, 8]), tf.int32))
    # the box on the 1/2, 1/4 and 1/8 images (one row each; libjpeg rounds sizes up)
    ratios = tf.constant([[2], [4], [8]])
    step = tf.cast(size, tf.float64) / tf.cast((size + ratios - 1) // ratios, tf.float64)
    start = tf.round(tf.cast(box[:2], tf.float64) / step)
    end = tf.maximum(start + 1, tf.round(tf.cast(box[:2] + box[2:], tf.float64) / step))
    windows = tf.cast(tf.concat([start, end - start], 1), tf.int32)
    # route the file to one decode by Switch/Merge (cheaper here than tf.switch_case)
    at1, rest = tf.raw_ops.Switch(data=data, pred=scale > 0)
    at2, rest = tf.raw_ops.Switch(data=rest, pred=scale > 1)
    at4, at8 = tf.raw_ops.Switch(data=rest, pred=scale > 2)
    images = [tf.io.decode_and_crop_jpeg(at1, box, channels=c, **_FAST_JPEG)]
    for i, (part, ratio) in enumerate(((at2, 2), (at4, 4), (at8, 8))):
        images.append(tf.io.decode_and_crop_jpeg(part, windows[i], channels=c, ratio=ratio, **_FAST_JPEG))
    return tf.raw_ops.Merge(inputs=images).output


def _resize(tf, image, h, w):
    """``image`` resized (bilinear) to h x w as uint8. Antialiasing matters (and costs:
    half the time here) only when shrinking a lot; chosen by Switch/Merge (the untaken
    resize never runs), cheaper here than tf.cond."""
    shrink = tf.reduce_any(tf.shape(image)[:2] >= (2 * h, 2 * w))
    plain, wide = tf.raw_ops.Switch(data=image, pred=shrink)
    image = tf.raw_ops.Merge(
        inputs=[
            tf.image.resize(plain, (h, w), method="bilinear"),
            tf.image.resize(wide, (h, w), method="bilinear", antialias=True),
        ]
    ).output
    return tf.cast(tf.round(image), tf.uint8)  # in [0, 255] already: weights >= 0, summing to 1


def _batches(tf, source, training, index, flipped, draws, batch, drop_remainder, fraction=None, needed=None):
    """Batches of (uint8 images, labels, files skipped before each): a folder's images (the
    first ``needed``: the rest stand in for files that fail to decode), or synthetic ones
    made a whole batch at a time from two small tables (one gather and one add)."""
    if source.kind == kit.SYNTHETIC:
        tables = source.tables()
        rows, noise = tf.constant(tables.rows), tf.constant(tables.noise)
        classes, shape = len(tables.rows), (source.height, source.width, source.channels)

        def make(i):
            pick, label = kit.synthetic_lookup(i, classes)
            images = tf.reshape(tf.gather(noise, pick), (-1, shape[0], shape[1] * shape[2])) + tf.gather(rows, label)[:, None, :]
            return tf.reshape(images, (-1, *shape)), tf.cast(label, tf.int32), tf.zeros_like(i, tf.int64)

        ds = tf.data.Dataset.from_tensor_slices(index).batch(batch, drop_remainder=drop_remainder)
        return ds.map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    ds = _images(tf, source, training, index, flipped, draws, fraction)
    if needed is not None:
        ds = ds.take(needed)
    return ds.batch(batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def to_input(tf, x):
    """uint8 images -> float32 in [-1, 1] (``kit.INPUT_SCALE`` and ``kit.INPUT_OFFSET``), on the device."""
    return tf.cast(x, tf.float32) / kit.INPUT_SCALE - kit.INPUT_OFFSET


def train_pipeline(tf, source, training, order, flip, draws, steps, skip, batch, replicas_here, first_replica, global_batch):
    """One pipeline's batches of an epoch, steps ``skip..steps-1``: for each step, the
    batches of its local replicas in replica order (the strategy hands them out in turn),
    replica ``r`` taking slice ``r`` of the step's global batch (archc.training.kit)."""
    import numpy as np

    picks = [
        kit.replica_indices(order, step, global_batch, batch, first_replica + local)
        for step in range(skip, steps)
        for local in range(replicas_here)
    ]
    index = np.concatenate(picks).astype(np.int64) if picks else np.zeros((0,), np.int64)
    needed = len(index)  # and spares after them, taken only where files fail to decode
    index = np.concatenate([index, index[: batch * replicas_here + needed // 100]])
    return _batches(tf, source, training, index, flip[index], None if draws is None else draws[index], batch, True, needed=needed)


def val_pipeline(tf, source, training, batch):
    import numpy as np

    index = np.arange(source.size, dtype=np.int64)
    return _batches(tf, source, training, index, np.zeros(source.size, bool), None, batch, False, kit.eval_fraction(training))


def run(config: kit.RunConfig) -> None:
    tf = _import_tf(config)
    strategy, who, is_chief = make_strategy(tf)
    import keras

    keras.utils.set_random_seed(config.seed)
    prepared = kit.prepare(config)
    schedule = kit.Schedule.for_run(prepared, strategy.num_replicas_in_sync)
    loop.train(prepared, schedule, KerasEngine(tf, strategy, who, is_chief, prepared, schedule))


class KerasEngine:
    """The loop's engine (:class:`archc.training.loop.Engine`) for Keras under a
    tf.distribute strategy; the chief alone evaluates and writes files."""

    checkpoint_suffix = CHECKPOINT_SUFFIX

    def __init__(self, tf, strategy, who: str, is_chief: bool, prepared, schedule: kit.Schedule):
        import keras

        from archc.codegen.backend import get

        config, training = prepared.config, prepared.training
        self.tf, self.keras, self.strategy, self.prepared, self.schedule = tf, keras, strategy, prepared, schedule
        self.replicas, self.is_main, self.rank_name = strategy.num_replicas_in_sync, is_chief, who
        self.kind = f"keras/{type(strategy).__name__}"
        gpu = bool(tf.config.list_logical_devices("GPU"))
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and gpu)
        if self.bf16:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.module = get("keras").load(prepared.model_file)
        with strategy.scope():
            self.model = self.module.create_model()
            self.optimizer = make_optimizer(training, make_schedule(schedule))
            self.optimizer.build(self.model.trainable_variables)
            start_ema(self.model, self.optimizer)
        self.stats = [v for v in self.model.non_trainable_weights if "float" in str(v.dtype)]  # BN moving mean and variance
        self.train_step = self.make_train_step()
        self.replica_means, self.replica_barrier, self.replica_any = self.make_collectives()
        self.multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.plain = PlainCopy(tf, self.module)
        self.window: list = []  # (loss, files skipped) of each step since the last log
        self.unreadable = 0  # files skipped because they failed to decode during the run (all replicas)
        self.final_weights = self.final_ema = None

    def make_train_step(self):
        """The strategy's step on the next batch of an iterator: each replica's loss is its
        sum over the global batch, so the reduced SUM is the global-batch mean."""
        tf, keras, model, optimizer, strategy = self.tf, self.keras, self.model, self.optimizer, self.strategy
        training = self.prepared.training
        kernels = [kit.is_kernel(v) for v in model.trainable_variables]
        decay = 2.0 * training.weight_decay / self.replicas
        smoothing, classes, global_batch = training.label_smoothing, self.prepared.classes, self.schedule.global_batch

        def forward_backward(x, y):
            x = to_input(tf, x)
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                per_example = keras.losses.categorical_crossentropy(
                    tf.one_hot(y, classes), logits, from_logits=True, label_smoothing=smoothing
                )
                loss = tf.reduce_sum(per_example) / global_batch
            grads = tape.gradient(loss, model.trainable_variables)
            if decay:
                grads = [g + decay * v if k else g for g, v, k in zip(grads, model.trainable_variables, kernels)]
            return loss, grads

        if self.prepared.config.compile:
            forward_backward = tf.function(forward_backward, jit_compile=True)

        def replica_step(x, y, skipped):
            loss, grads = forward_backward(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss, tf.reduce_sum(skipped)

        @tf.function
        def train_step(iterator):
            """(the loss, the files skipped for this step's batches: they failed to decode)."""
            loss, skipped = strategy.run(replica_step, args=next(iterator))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), strategy.reduce(
                tf.distribute.ReduceOp.SUM, skipped, axis=None
            )

        return train_step

    def make_collectives(self):
        """(the replicas' mean BN statistics, a barrier): all-reduces over the replicas."""
        tf, strategy, stats = self.tf, self.strategy, self.stats

        @tf.function
        def replica_means():
            def fn():
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in stats])

            return strategy.run(fn)

        @tf.function
        def replica_barrier():
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.ones(())))

        @tf.function
        def replica_any(flag):
            def fn(flag):
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

            return strategy.run(fn, args=(flag,))

        return replica_means, replica_barrier, replica_any

    def sync(self) -> None:
        """Average the BN moving statistics over the replicas (a collective: every worker
        calls it at the same steps)."""
        if self.replicas > 1 and self.stats:
            for v, mean in zip(self.stats, self.replica_means()):
                v.assign(self.strategy.experimental_local_results(mean)[0])

    def describe(self) -> str:
        return (
            f"keras on {type(self.strategy).__name__}, {self.replicas} replica(s), global batch {self.schedule.global_batch}, "
            f"{'mixed_bfloat16' if self.bf16 else 'fp32'}{', jit_compile' if self.prepared.config.compile else ''}"
        )

    def restore(self, path: Path, signature: dict) -> int:
        return _load(path, self.model, self.optimizer, signature)

    def save(self, path: Path, signature: dict, step: int) -> None:
        self.sync()
        if self.is_main:
            _save(path, self.model, self.optimizer, signature, step)

    def batches(self, start: int, total: int):
        """For each step, the iterator of its epoch's distributed dataset (one an epoch,
        made when the epoch starts): the step takes its replicas' batches from it."""
        prepared, schedule, config, replicas = self.prepared, self.schedule, self.prepared.config, self.replicas
        training, source = prepared.training, prepared.train
        for epoch, skip, end in kit.epoch_spans(schedule.steps_per_epoch, start, total):
            order = kit.epoch_order(source.size, epoch, config.seed)
            flip, draws = kit.epoch_augmentation(training, source, epoch, config.seed, config.augment)

            def dataset_fn(ctx, order=order, flip=flip, draws=draws, skip=skip, end=end):
                here = replicas // ctx.num_input_pipelines
                first = ctx.input_pipeline_id * here
                return train_pipeline(
                    self.tf, source, training, order, flip, draws, end, skip, training.batch_size, here, first, schedule.global_batch
                )

            iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
            for _ in range(skip, end):
                yield iterator

    def step(self, batch) -> None:
        self.window.append(self.train_step(batch))

    def mean_loss(self) -> float:
        """The window's mean loss; the files skipped in it are counted here, where the
        loop reads the device anyway."""
        import numpy as np

        loss = float(np.mean([float(v) for v, _ in self.window]))
        self.count_unreadable(sum(int(n) for _, n in self.window))
        self.window.clear()
        return loss

    def count_unreadable(self, skipped: int) -> None:
        if skipped:
            self.unreadable += skipped
            print(
                f"archc train: skipped {skipped} more files that failed to decode (tf.data does not say which); "
                f"{self.unreadable} so far, all replicas",
                file=sys.stderr,
                flush=True,
            )

    def evaluate(self):
        """On the chief alone (its copy outside the strategy); ``None`` on the others."""
        if not self.is_main:
            return None
        result, skipped = _evaluate(self.tf, self.keras, self.plain, self.model, self.optimizer, self.prepared)
        self.count_unreadable(skipped)
        return result

    def digests(self) -> dict:
        self.sync()
        self.final_weights = [v.numpy() for v in self.model.weights]
        self.final_ema = _ema_weights(self.model, self.optimizer)
        return {
            "params": kit.digest(v.numpy() for v in self.model.trainable_variables),
            "state": kit.digest(self.final_weights),
            "ema": kit.digest(self.final_ema) if self.final_ema is not None else None,
        }

    def save_final(self, out: Path) -> Path:
        self.plain.save(self.final_weights, out / "final.weights.h5")
        if self.final_ema is None:
            return out / "final.weights.h5"
        self.plain.save(self.final_ema, out / "final_ema.weights.h5")
        return out / "final_ema.weights.h5"

    def barrier(self) -> None:
        if self.replicas > 1:  # the others wait for the chief's files: no worker leaves while the chief still needs the cluster
            self.replica_barrier()

    def agree(self, stop: bool) -> bool:
        """Any worker's stop request (replicas in one process share theirs)."""
        if not self.multi_worker:
            return stop
        flags = self.replica_any(self.tf.constant(float(stop)))
        return bool(self.strategy.experimental_local_results(flags)[0] > 0)


# -- checkpoints ---------------------------------------------------------------------------


def _save(path: Path, model, optimizer, signature: dict, step: int) -> None:
    import numpy as np

    arrays = {f"model/{i}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}  # weights and dropout seeds
    arrays.update({f"optimizer/{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    meta = {
        "format": "archc-keras-checkpoint-1",
        "step": step,
        "signature": signature,
        "model": [v.path for v in model.variables],
        "optimizer": [v.path for v in optimizer.variables],
    }
    arrays["meta"] = np.array(json.dumps(meta))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    kit.atomic_write(path, write)


def _load(path: Path, model, optimizer, signature: dict) -> int:
    import numpy as np

    with kit.read_checkpoint(path, lambda p: np.load(p, allow_pickle=False)) as data:
        meta = kit.read_checkpoint(path, lambda _: json.loads(str(data["meta"])))
        kit.check_resumable(meta["signature"], signature, path)
        if meta["model"] != [v.path for v in model.variables] or meta["optimizer"] != [v.path for v in optimizer.variables]:
            raise UserError(f"{path}: the checkpoint's variables are not this model's and optimizer's; use another --out or --no-resume")
        for i, v in enumerate(model.variables):
            v.assign(data[f"model/{i}"])
        for i, v in enumerate(optimizer.variables):
            v.assign(data[f"optimizer/{i}"])
    return int(meta["step"])


def _ema_weights(model, optimizer):
    """The model's weights with the trainable ones replaced by their moving averages."""
    averages = getattr(optimizer, "_model_variables_moving_average", None) if optimizer.use_ema else None
    if not averages:
        return None
    by_var = {id(v): a for v, a in zip(model.trainable_variables, averages)}
    return [(by_var[id(v)] if id(v) in by_var else v).numpy() for v in model.weights]


class PlainCopy:
    """One copy of the model outside the distribution strategy, made on first use (on the
    chief only), to evaluate and to save weights without touching the replicated ones."""

    def __init__(self, tf, module):
        self.tf, self.module, self.model, self.scores = tf, module, None, None

    def load(self, weights):
        if self.model is None:
            self.model = self.module.create_model()
            self.scores = self.tf.function(lambda x: self.tf.cast(self.model(x, training=False), self.tf.float32))
        self.model.set_weights(weights)
        return self

    def save(self, weights, path: Path) -> None:
        kit.atomic_write(path, self.load(weights).model.save_weights)


def _evaluate(tf, keras, plain: PlainCopy, model, optimizer, prepared):
    """((weights, loss, top-1, samples), files skipped) on --val-data with the EMA weights
    (or the live ones), on the chief alone."""
    ema = _ema_weights(model, optimizer)
    plain.load(ema if ema is not None else [v.numpy() for v in model.weights])
    total_loss, correct, count, unreadable = 0.0, 0, 0, 0
    for x, y, skipped in val_pipeline(tf, prepared.val, prepared.training, prepared.training.batch_size):
        unreadable += int(tf.reduce_sum(skipped))
        logits = plain.scores(to_input(tf, x))
        total_loss += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
        correct += int(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.int32)))
        count += int(tf.shape(y)[0])
    return ("ema" if ema is not None else "live", total_loss / count, correct / count, count), unreadable
