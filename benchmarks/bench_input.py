"""Input pipeline speed: images per second per CPU core, both trainers, against the loaders
archc had before (commit 7904623, reimplemented here line for line, `old_*`).

Per core: every path runs on one thread (torch: one process, no workers, one thread;
tf.data: a private thread pool of one), and the rate is images per second of this
process's CPU time, so that other load on the machine does not count. What is timed:

- torch, JPEG: the dataset item (decode, crop, resize, flip) and the batch collation, as a
  DataLoader worker does it. Old: full decode, resize to the input, flip, float32
  [-1, 1] CHW in the worker. New: the recipe's random-resized crop (or the evaluation's
  central crop): simplejpeg decode at the smallest DCT scaling that still covers the
  input, the box resized by torch's uint8 antialiased bilinear, uint8 HWC (normalised on
  the device, :func:`to_input`).
- keras, JPEG: the tf.data pipeline to batches. Old: decode_image, resize, flip, [-1, 1].
  New: decode_and_crop_jpeg of the crop box (at ratio 2/4/8 where the box allows), resize
  (antialiased only when shrinking by 2 or more), flip, uint8.
- synthetic: old, one image at a time from a seeded generator (torch: per item, as a
  worker; keras: tf.numpy_function); new, a whole batch from two tables (gather + add),
  plus for torch the normalisation to float (on the GPU in a real run, here on the CPU).

The JPEGs are made here (smooth random colour fields with fine noise, quality 90).

usage: python benchmarks/bench_input.py [--sizes 500x375,1024x768] [--input 299] [--images 96] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, table, today, write_json  # noqa: E402

BATCH = 32


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + rng.integers(-12, 13, size=field.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        files.append(str(path))
    return files


# -- the loaders before this change, as they were ---------------------------------------------


def old_load_image(path, height, width, channels=3):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if channels == 1 else array


def old_synthetic_image(index, classes, height, width, channels, seed=0):
    import numpy as np

    label = index % classes
    colour = np.random.default_rng([0, label]).integers(40, 216, size=channels)
    noise = np.random.default_rng([seed, 1, index]).integers(-40, 41, size=(height, width, channels))
    return np.clip(colour[None, None, :] + noise, 0, 255).astype(np.uint8)


def old_to_unit_range(images):
    import numpy as np

    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def old_torch_item(load, flip):
    import numpy as np
    import torch

    image, label = load()
    if flip:
        image = image[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(old_to_unit_range(image).transpose(2, 0, 1))), label


def old_keras_dataset(tf, files, labels, h, w, c, flipped, synthetic_classes=None):
    import numpy as np

    index = np.arange(len(files) if synthetic_classes is None else len(flipped), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((index, flipped))
    if synthetic_classes is not None:

        def make(i):
            return old_synthetic_image(int(i), synthetic_classes, h, w, c, 0)

        def load(i, f):
            image = tf.numpy_function(make, [i], tf.uint8, stateful=False)
            image.set_shape((h, w, c))
            return image, tf.cast(i % synthetic_classes, tf.int32), f

    else:
        files_t, labels_t = tf.constant(files), tf.constant(labels, tf.int32)

        def load(i, f):
            image = tf.io.decode_image(tf.io.read_file(tf.gather(files_t, i)), channels=c, expand_animations=False)
            image.set_shape((None, None, c))
            return image, tf.gather(labels_t, i), f

    def finish(image, label, f):
        image = tf.image.resize(tf.cast(image, tf.float32), (h, w), method="bilinear", antialias=True)
        image = tf.cond(f, lambda: tf.image.flip_left_right(image), lambda: image)
        return image / 127.5 - 1.0, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


# -- timing ---------------------------------------------------------------------------------


def cpu_rate(images: int, run) -> float:
    """Images per second of this process's CPU time (all its threads: one here)."""
    start = time.process_time()
    run()
    return images / (time.process_time() - start)


def one_thread(tf, ds):
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False  # no background tuning thread
    return ds.with_options(options)


def torch_rates(files, size, count) -> dict[str, float]:
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    from archc.backends.torch_backend import train as torch_train
    from archc.ir.recipe import Augment, LearningRate, Optimizer, Training
    from archc.training.kit import SYNTHETIC, DataSource, crop_draws, flips

    recipe = Training(
        optimizer=Optimizer(kind="sgd"), learning_rate=LearningRate(initial=0.1), batch_size=BATCH, epochs=1, augment=Augment()
    )
    source = DataSource("folder", len(files), size, size, 3, 2, files, [i % 2 for i in range(len(files))], ["a", "b"])
    draws, flipped = crop_draws(len(files), 0, 0), flips(len(files), 0, 0)
    samples = torch_train.Samples(source, recipe)
    batches = [list(range(k, min(k + BATCH, count))) for k in range(0, count, BATCH)]

    def old_jpeg():
        for b in batches:
            default_collate([old_torch_item(lambda i=i: (old_load_image(files[i], size, size), i % 2), flipped[i]) for i in b])

    def new_jpeg():
        for b in batches:
            default_collate([samples[(i, bool(flipped[i]), tuple(draws[i].tolist()))] for i in b])

    def new_eval():
        for b in batches:
            default_collate([samples[(i, False, recipe.augment.eval_crop)] for i in b])

    synthetic = DataSource(SYNTHETIC, 1024, size, size, 3, 10)
    make = torch_train.SyntheticBatches(synthetic, torch.device("cpu"))
    synthetic_count = count * 4

    def old_synthetic():
        for k in range(0, synthetic_count, BATCH):
            default_collate(
                [old_torch_item(lambda i=i: (old_synthetic_image(i, 10, size, size, 3), i % 10), False) for i in range(k, k + BATCH)]
            )

    def new_synthetic():
        for k in range(0, synthetic_count, BATCH):
            make(np.arange(k, k + BATCH))

    return {
        "jpeg old": cpu_rate(count, old_jpeg),
        "jpeg new (train crop)": cpu_rate(count, new_jpeg),
        "jpeg new (eval crop)": cpu_rate(count, new_eval),
        "synthetic old": cpu_rate(synthetic_count, old_synthetic),
        "synthetic new": cpu_rate(synthetic_count, new_synthetic),
    }


def keras_rates(files, size, count) -> dict[str, float]:
    import numpy as np
    import tensorflow as tf

    from archc.backends.keras_backend import train as keras_train
    from archc.ir.recipe import Augment, LearningRate, Optimizer, Training
    from archc.training.kit import SYNTHETIC, DataSource, crop_draws, flips

    recipe = Training(
        optimizer=Optimizer(kind="sgd"), learning_rate=LearningRate(initial=0.1), batch_size=BATCH, epochs=1, augment=Augment()
    )
    labels = [i % 2 for i in range(len(files))]
    source = DataSource("folder", len(files), size, size, 3, 2, files, labels, ["a", "b"])
    index = np.arange(count, dtype=np.int64)
    draws, flipped = crop_draws(len(files), 0, 0)[:count], flips(len(files), 0, 0)[:count]
    synthetic_count = count * 4
    synthetic = DataSource(SYNTHETIC, synthetic_count, size, size, 3, 10)

    pipelines = {
        "jpeg old": (count, old_keras_dataset(tf, files[:count], labels[:count], size, size, 3, flipped)),
        "jpeg new (train crop)": (count, keras_train._batches(tf, source, recipe, index, flipped, draws, BATCH, False)),
        "jpeg new (eval crop)": (count, keras_train._batches(tf, source, recipe, index, np.zeros(count, bool), None, BATCH, False, 0.875)),
        "synthetic old": (synthetic_count, old_keras_dataset(tf, [], [], size, size, 3, np.zeros(synthetic_count, bool), 10)),
        "synthetic new": (
            synthetic_count,
            keras_train._batches(tf, synthetic, recipe, np.arange(synthetic_count, dtype=np.int64), None, None, BATCH, False),
        ),
    }
    rates = {}
    for name, (n, ds) in pipelines.items():
        ds = one_thread(tf, ds)
        for _ in ds.take(1):  # build the graph and warm the file cache outside the timing
            pass
        rates[name] = cpu_rate(n, lambda ds=ds: [None for _ in ds])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500x375,1024x768", help="JPEG sizes (width x height), comma-separated")
    parser.add_argument("--input", type=int, default=299, help="the network's input size (square)")
    parser.add_argument("--images", type=int, default=96, help="JPEGs per size (synthetic: 4x as many)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import tensorflow as tf
    import torch

    torch.set_num_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    results = {"machine": machine(), "date": today(), "input": args.input, "sizes": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes.split(","):
            width, height = (int(v) for v in text.split("x"))
            files = make_jpegs(Path(tmp) / text, args.images, width, height)
            for trainer, measure in (("torch", torch_rates), ("keras", keras_rates)):
                measure(files, args.input, min(BATCH, args.images))  # warm-up: imports, graphs, file cache
                runs = [measure(files, args.input, args.images) for _ in range(args.reps)]
                rates = {name: median([r[name] for r in runs]) for name in runs[0]}
                results["sizes"].setdefault(text, {})[trainer] = rates
                for name, rate in rates.items():
                    base = rates["synthetic old" if name.startswith("synthetic") else "jpeg old"]
                    rows.append(
                        (f"{width}x{height}" if name.startswith("jpeg") else "-", trainer, name, f"{rate:,.0f}", f"{rate / base:.2f}x")
                    )
                print(f"{text} {trainer}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()), flush=True)
    print()
    print(f"images/s per CPU core, into {args.input}x{args.input} (median of {args.reps}); {results['machine']}")
    print(table(("JPEG size", "trainer", "path", "images/s/core", "vs old"), rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
