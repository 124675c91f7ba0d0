"""What the backends' trainers share, with no deep-learning framework: the run's
configuration, the model to train (the spec compiled at the requested image size and
rendered by the backend), the data (an image folder or the synthetic source), which
samples each replica sees at each step, atomic checkpoint files, and the metric logs.

The trainers (``archc.backends.<backend>.train``) add only what is framework-specific:
the model, the optimizer, the distributed step, saving tensors. Keeping the rest here
makes a step mean the same thing in both: the same global batch, the same samples, the
same learning rate (:func:`archc.ir.recipe.learning_rate_at`).

Sharding: the samples of an epoch are a permutation of the data set seeded by (seed,
epoch), cut into global batches of ``batch_size * replicas``; replica ``r`` takes the
``r``-th slice of ``batch_size`` of each global batch. The tail of an epoch that does not
fill a global batch is dropped, so that every replica runs the same number of steps. A
resumed run recomputes the permutation and skips the steps already done.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from archc.ir.recipe import DEFAULT_TRAINING, Training, learning_rate_at
from archc.syntax.errors import SpecError, UserError, make_out

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SYNTHETIC = "synthetic"


# -- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Everything ``archc train`` was asked; the recipe itself comes from the spec."""

    spec: str
    data: str  # "synthetic" or an image folder (one sub-folder per class)
    out: Path
    backend: str = "torch"
    val_data: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # (height, width); None: the spec's input
    epochs: float | None = None  # overrides of the spec's recipe
    batch_size: int | None = None
    lr: float | None = None
    max_steps: int | None = None  # stop after this many steps (smoke runs); the schedule still follows epochs
    synthetic_samples: int = 1024  # samples per epoch of the synthetic source
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end of each epoch and of the run
    resume: bool = True  # resume from OUT/checkpoints/latest when it exists
    compile: bool = False
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp32
    channels_last: str = "auto"  # torch: auto (on GPU), on, off
    loader_workers: int | None = None  # data-loading processes per replica; None: 4 on GPU, 0 on CPU
    augment: bool = True  # the recipe's random crops and flips (image folders only)
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    bad_images: str = "refuse"  # files of an image folder that cannot be read: refuse (list them) or skip


def parse_image_size(text: str) -> tuple[int, int]:
    """``224`` or ``224x192`` (height x width)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise UserError(f"--image-size: expected H or HxW (positive integers), found {text!r}")
    return (values[0], values[-1])


# -- the model and the recipe ----------------------------------------------------------------


@dataclass
class Prepared:
    """The run's model, recipe and data, worked out identically on every process."""

    config: RunConfig
    analysis: Any  # archc.passes.analysis.Analysis
    training: Training
    model_file: Path
    train: DataSource
    val: DataSource | None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.analysis.net.input)

    @property
    def classes(self) -> int:
        return int(self.analysis.output[-1])


def effective_recipe(training: Training | None, config: RunConfig, spec: str) -> Training:
    """The spec's ``training:`` section (or, without one, ``DEFAULT_TRAINING``) with the
    command line's overrides applied."""
    if training is None:
        training = DEFAULT_TRAINING
    changes: dict[str, Any] = {}
    if config.epochs is not None:
        changes["epochs"] = config.epochs
    if config.batch_size is not None:
        changes["batch_size"] = config.batch_size
    data = training.model_dump()
    data.update(changes)
    if config.lr is not None:
        data["learning_rate"] = {**data["learning_rate"], "initial": config.lr}
    try:
        return Training.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: a bad override value
        raise UserError(f"expected valid recipe overrides, found: {exc}") from None


def compile_model(config: RunConfig):
    """(analysis at the run's image size, effective recipe). The recipe's dropout is the
    value of the spec's ``dropout`` param unless ``-p dropout=...`` sets it."""
    from archc.ir.resolve import compile_spec
    from archc.passes.pipeline import load

    params = dict(config.params)
    training = effective_recipe(compile_spec(config.spec, params).training, config, config.spec)
    if training.dropout is not None and "dropout" not in params:
        params["dropout"] = training.dropout
    try:
        analysis = load(config.spec, params, config.image_size)
    except SpecError as exc:
        if config.image_size is None:
            raise
        size = "x".join(map(str, config.image_size))
        raise UserError(f"--image-size {size} is too small for this network: {exc}") from None
    if len(analysis.output) != 1:
        raise UserError(f"{config.spec}: expected the network to end in a vector of class scores, found output {list(analysis.output)}")
    return analysis, training


def render_model(analysis, backend_name: str, out: Path) -> Path:
    """Write the generated module for this run into ``OUT/model/`` (atomically, so that
    processes writing the same file at once never see half of it) and return its path."""
    from archc.codegen.backend import get, module_name, write_all

    backend = get(backend_name)
    path = Path(out) / "model" / f"{module_name(analysis, backend_name)}.py"
    write_all({path: backend.render(analysis)})
    return path


def prepare(config: RunConfig) -> Prepared:
    """Compile, render and list the data: everything a trainer needs before a framework."""
    analysis, training = compile_model(config)
    shape = tuple(analysis.net.input)
    classes = int(analysis.output[-1])
    train = open_source(config.data, shape, classes, config, "--data")
    val = open_source(config.val_data, shape, classes, config, "--val-data") if config.val_data else None
    if val is not None and train.class_names and val.class_names and val.class_names != train.class_names:
        raise UserError(f"--val-data: expected the classes of --data ({', '.join(train.class_names)}), found {', '.join(val.class_names)}")
    make_out(config.out)
    model_file = render_model(analysis, config.backend, config.out)
    return Prepared(config, analysis, training, model_file, train, val)


# -- data --------------------------------------------------------------------------------------


@dataclass
class DataSource:
    """An image folder (``files``, ``labels``, ``class_names``) or the synthetic source.

    ``load(i, box, flip)`` returns image ``i`` of a folder as uint8 height x width x
    channels: the region ``box`` picks (the whole image when ``None``) resized to the
    network's input, flipped left-right when ``flip``. The synthetic source makes whole batches at once (:class:`SyntheticTables`)."""

    kind: str  # "folder" or "synthetic"
    size: int
    height: int
    width: int
    channels: int
    classes: int
    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    seed: int = 0
    skipped: int = 0  # unreadable files left out (--bad-images skip)

    def load(self, index: int, box: Box | None = None, flip: bool = False):
        return load_image(self.files[index], self.height, self.width, self.channels, box, flip)

    def label(self, index: int) -> int:
        return index % self.classes if self.kind == SYNTHETIC else self.labels[index]

    def tables(self) -> SyntheticTables:
        return SyntheticTables.make(self.classes, self.height, self.width, self.channels, self.seed)

    def describe(self) -> str:
        if self.kind == SYNTHETIC:
            return f"synthetic data: {self.size} samples an epoch, {self.classes} classes, {self.height}x{self.width}x{self.channels}"
        skipped = f" ({self.skipped} unreadable files skipped)" if self.skipped else ""
        return f"image folder: {self.size} images of {len(self.class_names)} classes{skipped}, resized to {self.height}x{self.width}"


def open_source(data: str, shape: tuple[int, int, int], classes: int, config: RunConfig, option: str) -> DataSource:
    """``synthetic`` or an image folder, checked against the network's number of classes."""
    height, width, channels = shape
    if data == SYNTHETIC:  # validation samples come from another seed than the training ones
        seed = config.seed if option == "--data" else config.seed + 7919
        return DataSource(SYNTHETIC, config.synthetic_samples, height, width, channels, classes, seed=seed)
    names, files, labels = scan_image_folder(data, option)
    if len(names) != classes:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise UserError(
            f"{option} {data}: expected {classes} class folders (the network's classes), found {len(names)} ({shown}); "
            f"pass -p classes={len(names)} if the spec declares it"
        )
    bad = unreadable_images(files)
    if bad and config.bad_images != "skip":
        listed = "; ".join(f"{os.path.relpath(f, data)} ({why})" for f, why in bad[:5]) + (
            f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        raise UserError(
            f"{option} {data}: expected images it can read, found {len(bad)} of {len(files)} files that are not: {listed}; pass --bad-images skip to train without them"
        )
    if bad:
        dropped = {f for f, _ in bad}
        kept = [(f, label) for f, label in zip(files, labels) if f not in dropped]
        files, labels = [f for f, _ in kept], [label for _, label in kept]
    return DataSource("folder", len(files), height, width, channels, classes, files, labels, names, config.seed, skipped=len(bad))


# The last bytes of a whole file: a JPEG ends with its EOI marker, a PNG with its IEND chunk.
ENDINGS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L"}  # Pillow's modes of 16-bit grey PNGs: Image.convert would clip them
MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L", "F"}


def unreadable_images(files: list[str]) -> list[tuple[str, str]]:
    """(file, why) for each file that is not a whole JPEG or PNG in a mode the loaders
    convert: a cheap check of every file before step 1 (the header, the size, the mode,
    and the format's end marker, which a truncated file lacks), so that a bad file does
    not end a run hours in."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in files:
        try:
            size = os.path.getsize(path)
            if size == 0:
                bad.append((path, "empty"))
                continue
            with Image.open(path) as img:
                kind, mode, (w, h) = img.format, img.mode, img.size
            with open(path, "rb") as fh:
                fh.seek(max(size - 1024, 0))
                tail = fh.read()
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            bad.append((path, "not an image" if isinstance(exc, UnidentifiedImageError) else "unreadable"))
            continue
        if kind not in ENDINGS:
            bad.append((path, f"{kind} data, not JPEG or PNG"))
        elif mode not in MODES:
            bad.append((path, f"mode {mode}"))
        elif w < 1 or h < 1:
            bad.append((path, f"size {w}x{h}"))
        elif ENDINGS[kind] not in tail:
            bad.append((path, "truncated"))
    return bad


class Unreadable(NamedTuple):
    """A file of the data set that passed :func:`unreadable_images` but failed to decode
    during the run: skipped, and counted by the trainer."""

    path: str
    reason: str


def report_unreadable(item: Unreadable, count: int, rank: int = 0) -> None:
    """One line on stderr for a file skipped mid-run (from any process)."""
    print(
        f"archc train: skipped {item.path}: it failed to decode ({item.reason}); {count} skipped so far on rank {rank}",
        file=sys.stderr,
        flush=True,
    )


def decode_errors() -> tuple[type[BaseException], ...]:
    """What decoding a damaged file raises: Pillow (OSError, SyntaxError for a broken PNG
    chunk, DecompressionBombError), libjpeg-turbo through simplejpeg (ValueError), zlib."""
    import struct
    import zlib

    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def scan_image_folder(root: str | Path, option: str = "--data") -> tuple[list[str], list[str], list[int]]:
    """(class names, files, labels) of a folder with one sub-folder of JPEG/PNG images per
    class; classes and files sorted by name, hidden entries skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{option}: expected '{SYNTHETIC}' or a folder of class folders, found {str(root)!r} (no such folder)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_SUFFIXES) and not fname.startswith("."):
                    files.append(os.path.join(dirpath, fname))
                    labels.append(label)
    if not names or not files:
        raise UserError(f"{option} {root}: expected one sub-folder of JPEG/PNG images per class, found none")
    empty = [n for i, n in enumerate(names) if i not in set(labels)]
    if empty:
        raise UserError(f"{option} {root}: expected images in every class folder, found none in {', '.join(empty)}")
    return names, files, labels


# -- augmentation: the same boxes in both trainers ---------------------------------------------

#: A crop box of an image of (height, width): (top, left, box height, box width).
Box = Callable[[int, int], tuple[int, int, int, int]]


def crop_draws(size: int, epoch: int, seed: int):
    """Four uniform numbers in [0, 1) per sample of ``epoch``: the random crop's area, aspect
    ratio, top and left (:func:`random_box`). Drawn once per epoch for the whole data set,
    so the trainers pass the same numbers whatever sample a replica or worker loads."""
    import numpy as np

    return np.random.default_rng([seed, 4, epoch]).random((size, 4))


def random_box(height: int, width: int, draw: Sequence[float], area: Sequence[float], aspect: Sequence[float]) -> tuple[int, int, int, int]:
    """The Inception-style crop of an image of ``height`` x ``width`` for the numbers ``draw``
    (:func:`crop_draws`): area a fraction of the image's uniform in ``area``, aspect ratio
    (width / height) log-uniform in ``aspect``, position uniform. A box wider or taller than
    the image is scaled down to fit, keeping its aspect ratio (torchvision redraws it up to
    ten times instead). The Keras trainer computes the same numbers with TensorFlow ops
    (float64, the same roundings); a test checks they agree."""
    fraction = area[0] + draw[0] * (area[1] - area[0])
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    ratio = math.exp(log_low + draw[1] * (log_high - log_low))
    pixels = fraction * height * width
    w, h = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
    fit = min(1.0, width / w, height / h)
    w = min(width, max(1, round(w * fit)))
    h = min(height, max(1, round(h * fit)))
    return math.floor(draw[2] * (height - h + 1)), math.floor(draw[3] * (width - w + 1)), h, w


def central_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """The central ``fraction`` of each side, as ``tf.image.central_crop`` computes it."""
    top, left = int((height - height * fraction) / 2), int((width - width * fraction) / 2)
    return top, left, height - 2 * top, width - 2 * left


def load_image(path: str, height: int, width: int, channels: int = 3, box: Box | None = None, flip: bool = False):
    """A JPEG/PNG file as uint8 height x width x channels: the region ``box`` picks (the
    whole image when ``None``) resized (bilinear, antialiased) to the input, flipped
    left-right when ``flip``.

    JPEGs are decoded at reduced size where the region allows (libjpeg's DCT scaling by
    1/2, 1/4 or 1/8, Pillow's ``draft``), and the resize reduces by whole factors first
    (``reducing_gap``): large photos cost little more than small ones."""
    import numpy as np
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as img:
        full_w, full_h = img.size
        top, left, h, w = box(full_h, full_w) if box is not None else (0, 0, full_h, full_w)
        img.draft(mode, (math.ceil(full_w * width / w), math.ceil(full_h * height / h)))  # no-op for PNG
        sx, sy = full_w / img.size[0], full_h / img.size[1]
        if img.mode in WIDE_MODES:  # 16-bit (or 32-bit) grey: its high byte, as libpng and torchvision do
            img = Image.fromarray((np.asarray(img, dtype=np.uint32).clip(0, 65535) >> 8).astype(np.uint8), "L")
        if img.mode != mode:
            img = img.convert(mode)
        region = (left / sx, top / sy, (left + w) / sx, (top + h) / sy)
        if img.size != (width, height) or region != (0, 0, width, height):
            img = img.resize((width, height), Image.BILINEAR, box=region, reducing_gap=3.0)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one
    return array[:, :, None] if channels == 1 else array


# -- the synthetic source ----------------------------------------------------------------------

SYNTHETIC_POOL = 16  # noise images per source


@dataclass(frozen=True)
class SyntheticTables:
    """The synthetic source as two small uint8 tables, so that a trainer makes a whole
    batch with one gather and one add, on its device: sample ``i`` has label ``i % classes``
    and is ``noise[(i // classes) % SYNTHETIC_POOL]`` plus, on every pixel, the colour of
    its class (``rows[i % classes]``: the colour repeated along an image row, so the add
    runs over contiguous rows). Colours 40..215 (stored less 40) plus noise -40..40 (stored
    plus 40) never pass 255: uint8 adds without clipping. The colours are the same for
    every seed (a smoke run can learn them); the noise depends on the seed (a validation
    source, another seed, holds other samples)."""

    rows: Any  # uint8 classes x (width * channels)
    noise: Any  # uint8 SYNTHETIC_POOL x height x width x channels

    @classmethod
    def make(cls, classes: int, height: int, width: int, channels: int, seed: int) -> SyntheticTables:
        import numpy as np

        colours = np.stack([np.random.default_rng([0, label]).integers(40, 216, size=channels) for label in range(classes)])
        noise = np.random.default_rng([seed, 1]).integers(-40, 41, size=(SYNTHETIC_POOL, height, width, channels))
        return cls(np.tile(colours - 40, (1, width)).astype(np.uint8), (noise + 40).astype(np.uint8))

    def batch(self, index):
        """uint8 images of samples ``index`` (numpy; the trainers do the same with their ops)."""
        import numpy as np

        index = np.asarray(index)
        noise, labels = synthetic_lookup(index, len(self.rows))
        images = self.noise[noise]
        images.reshape(len(index), images.shape[1], -1)[:] += self.rows[labels][:, None, :]
        return images


def synthetic_lookup(index, classes: int):
    """(noise image, label) of synthetic samples ``index``, in any array library with
    ``//`` and ``%``: the one rule of :class:`SyntheticTables`, which every trainer's
    batch maker follows with its own gather and add."""
    return (index // classes) % SYNTHETIC_POOL, index % classes


# -- the model's side: the same preprocessing and weight decay in both trainers ----------------

#: uint8 pixels become ``x / INPUT_SCALE - INPUT_OFFSET``: [-1, 1], the Inception/Xception
#: preprocessing, applied on the device (batches travel as uint8, a quarter of float32's bytes).
INPUT_SCALE = 127.5
INPUT_OFFSET = 1.0


def is_kernel(tensor) -> bool:
    """Weight decay applies to kernels: trainable tensors of two or more dimensions (conv,
    separable and dense kernels; never biases or batch-norm scales and offsets)."""
    return len(tensor.shape) >= 2


# -- steps: what each replica sees -------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Steps, samples and learning rate of a run, the same on every process."""

    training: Training
    dataset_size: int
    replicas: int

    @property
    def batch_size(self) -> int:
        return self.training.batch_size

    @property
    def global_batch(self) -> int:
        return self.training.batch_size * self.replicas

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.global_batch

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.global_batch

    def total_steps(self, max_steps: int | None = None) -> int:
        steps = math.ceil(self.training.epochs * self.steps_per_epoch - 1e-9)
        return min(steps, max_steps) if max_steps is not None else steps

    def learning_rate(self, step: int) -> float:
        """The rate of step ``step`` (0-based): :func:`archc.ir.recipe.learning_rate_at`."""
        return learning_rate_at(self.training.learning_rate, step * self.global_batch, self.samples_per_epoch, self.global_batch)

    @classmethod
    def for_run(cls, prepared: Prepared, replicas: int) -> Schedule:
        """The schedule of ``prepared``'s training data over ``replicas``, checked."""
        schedule = cls(prepared.training, prepared.train.size, replicas)
        schedule.check()
        return schedule

    def check(self, what: str = "--data") -> None:
        if self.steps_per_epoch < 1:
            raise UserError(
                f"{what}: expected at least one global batch ({self.batch_size} x {self.replicas} replicas = "
                f"{self.global_batch} samples), found {self.dataset_size} samples"
            )


def epoch_order(size: int, epoch: int, seed: int):
    """The permutation of sample indices for ``epoch``."""
    import numpy as np

    return np.random.default_rng([seed, 2, epoch]).permutation(size)


def replica_indices(order, step_in_epoch: int, global_batch: int, batch: int, replica: int):
    """The sample indices replica ``replica`` trains on at ``step_in_epoch``."""
    start = step_in_epoch * global_batch + replica * batch
    return order[start : start + batch]


def epoch_spans(steps_per_epoch: int, start: int, total: int) -> Iterator[tuple[int, int, int]]:
    """(epoch, first step, end step) of each epoch that steps ``start..total-1`` touch,
    the steps counted within the epoch: a resumed run starts inside its epoch."""
    step = start
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        end = min(steps_per_epoch, total - epoch * steps_per_epoch)
        yield epoch, skip, end
        step += end - skip


def flips(size: int, epoch: int, seed: int):
    """Which samples are flipped left-right in ``epoch`` (bool array over the data set)."""
    import numpy as np

    return np.random.default_rng([seed, 3, epoch]).random(size) < 0.5


def epoch_augmentation(training: Training, source: DataSource, epoch: int, seed: int, enabled: bool = True):
    """(flips, crop draws) of ``epoch`` for the training images: a bool per sample (flip
    left-right) and the (size, 4) numbers of :func:`random_box`, or ``None`` where the recipe
    (``augment:``) or ``--no-augment`` leaves it out. A recipe without ``augment:`` flips
    and resizes the whole image; the synthetic source is never augmented."""
    import numpy as np

    augment = training.augment
    if not enabled or source.kind == SYNTHETIC:
        return np.zeros(source.size, bool), None
    flipped = flips(source.size, epoch, seed) if augment is None or augment.flip else np.zeros(source.size, bool)
    return flipped, (crop_draws(source.size, epoch, seed) if augment is not None else None)


def eval_fraction(training: Training) -> float:
    """The central fraction of each side evaluated: the recipe's ``eval_crop`` (1: all)."""
    return training.augment.eval_crop if training.augment is not None else 1.0


# -- files: checkpoints, metrics, digests ------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the file into place with ``os.replace``: a reader,
    or a run killed at any moment, sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # same suffix: some writers insist on theirs
    try:
        write(str(tmp))
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def checkpoint_path(out: str | Path, suffix: str) -> Path:
    return Path(out) / "checkpoints" / f"latest{suffix}"


def read_checkpoint(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``; a file it cannot read (empty, truncated, another tool's) is refused in
    one line that says what to do, as the user's, not as a bug in archc: atomic_write never
    leaves such a file, but a copy, a full disk or a hand can."""
    import pickle
    import zipfile

    try:
        return read(path)
    except (OSError, EOFError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        why = f"{type(exc).__name__}: {why[:100]}{'...' if len(why) > 100 else ''}" if why else type(exc).__name__
        raise UserError(
            f"{path}: expected a checkpoint of archc train, found a file it cannot read ({why}); use another --out or --no-resume"
        ) from None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (never the files they
    were to replace). Call it from the one process that writes there, before it writes."""
    removed = []
    for tmp in Path(folder).glob(".tmp-*"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def run_signature(prepared: Prepared, replicas: int) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed by this run."""
    return {
        "spec": prepared.analysis.net.name,
        "params": {k: v for k, v in prepared.analysis.net.params.items()},
        "input": list(prepared.analysis.net.input),
        "backend": prepared.config.backend,
        "global_batch": prepared.training.batch_size * replicas,
        "data": "synthetic" if prepared.train.kind == SYNTHETIC else "folder",
        "dataset_size": prepared.train.size,
    }


def run_info(prepared: Prepared, schedule: Schedule, total: int, engine: str) -> dict[str, Any]:
    """What ``OUT/run.json`` records of a run."""
    return {
        "spec": prepared.config.spec,
        "network": prepared.analysis.net.name,
        "params": prepared.analysis.net.params,
        "input": list(prepared.analysis.net.input),
        "model_file": str(prepared.model_file),
        "engine": engine,
        "recipe": prepared.training.model_dump(),
        "replicas": schedule.replicas,
        "global_batch": schedule.global_batch,
        "steps_per_epoch": schedule.steps_per_epoch,
        "samples_per_epoch": schedule.samples_per_epoch,
        "total_steps": total,
        "data": prepared.config.data,
        "dataset_size": prepared.train.size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A checkpoint of another network cannot be resumed; a changed global batch or data set
    changes what a step means, which is refused rather than silently reinterpreted."""
    different = [k for k in current if k in saved and json.dumps(saved[k], sort_keys=True) != json.dumps(current[k], sort_keys=True)]
    if different:
        details = "; ".join(f"{k}: checkpoint {saved[k]!r}, now {current[k]!r}" for k in different)
        raise UserError(f"{path}: cannot resume a different run ({details}); use another --out or --no-resume")


def digest(arrays: Iterable[Any]) -> str:
    """sha256 over the bytes of arrays in order: equal on every replica when they agree."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_json(path: str | Path, data: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")

    return atomic_write(path, write)


class MetricLog:
    """Per-step lines on stdout and rows in ``OUT/metrics.csv`` (and ``OUT/eval.csv``),
    plus TensorBoard scalars through ``tensorboard`` (``scalar(tag, value, step)``) where
    a backend has one. Only the process that logs (rank 0, the chief) makes one."""

    TRAIN = ("step", "epoch", "samples", "loss", "lr", "images_per_s", "elapsed_s")
    EVAL = ("step", "epoch", "weights", "loss", "top1", "samples")

    def __init__(self, out: str | Path, resumed_step: int, tensorboard: Any = None, stream=None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self.stream = stream or sys.stdout
        for name, header in (("metrics.csv", self.TRAIN), ("eval.csv", self.EVAL)):
            _truncate_after(self.out / name, header, resumed_step)

    def echo(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def train(self, step: int, epoch: float, samples: int, loss: float, lr: float, images_per_s: float, elapsed: float, total: int) -> None:
        self.echo(f"step {step}/{total}  epoch {epoch:.2f}  loss {loss:.4f}  lr {lr:.6g}  {images_per_s:,.1f} img/s")
        _append(
            self.out / "metrics.csv",
            self.TRAIN,
            [step, f"{epoch:.4f}", samples, f"{loss:.6f}", f"{lr:.8g}", f"{images_per_s:.2f}", f"{elapsed:.2f}"],
        )
        if self.tensorboard is not None:
            self.tensorboard.scalar("train/loss", loss, step)
            self.tensorboard.scalar("train/lr", lr, step)
            self.tensorboard.scalar("train/images_per_s", images_per_s, step)

    def evaluation(self, step: int, epoch: float, weights: str, loss: float, top1: float, samples: int) -> None:
        self.echo(f"eval at step {step} ({weights} weights): loss {loss:.4f}  top-1 {top1:.4f}  on {samples} images")
        _append(self.out / "eval.csv", self.EVAL, [step, f"{epoch:.4f}", weights, f"{loss:.6f}", f"{top1:.6f}", samples])
        if self.tensorboard is not None:
            self.tensorboard.scalar(f"eval/{weights}/loss", loss, step)
            self.tensorboard.scalar(f"eval/{weights}/top1", top1, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class TensorBoard:
    """Scalars in a TensorBoard event file under ``folder``, written with tensorboard's
    record writer and protos alone: its ``EventFileWriter`` (and so
    ``torch.utils.tensorboard``) imports TensorFlow where it is installed, and no trainer
    needs another framework for its logs. The file and its events are those
    ``SummaryWriter.add_scalar`` writes: a version event, then one scalar summary each."""

    _files = itertools.count()

    def __init__(self, folder: str | Path):
        from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._files)}"
        self.writer = RecordWriter(open(folder / name, "wb"))
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=SourceMetadata(writer="archc")))

    def write(self, event) -> None:
        self.writer.write(event.SerializeToString())
        self.writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self.write(Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self.writer.close()


def tensorboard(out: str | Path) -> TensorBoard | None:
    """``OUT/tensorboard``'s writer, or ``None`` (said on stderr) without tensorboard."""
    try:
        return TensorBoard(Path(out) / "tensorboard")
    except ImportError:
        print("tensorboard is not installed: metrics go to metrics.csv only", file=sys.stderr, flush=True)
        return None


def _append(path: Path, header: Sequence[str], row: Sequence[Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(header)
        writer.writerow(row)


def _truncate_after(path: Path, header: Sequence[str], step: int) -> None:
    """Drop the rows a killed run logged after its last checkpoint: the resumed run logs
    those steps again."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if len(keep) == len(rows) - 1:
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(keep)

    atomic_write(path, write)


class Throughput:
    """Images per second over the steps since the last report."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> None:
        self.images += images

    def report(self) -> tuple[float, float]:
        """(images/s since the last report, seconds since the start)."""
        now = time.perf_counter()
        rate = self.images / max(now - self.mark, 1e-9)
        self.mark, self.images = now, 0
        return rate, now - self.start
