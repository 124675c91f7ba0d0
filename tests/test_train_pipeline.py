"""The input pipelines and EMA of both trainers agree: the same crop boxes for the same
seed, the same synthetic batches, the same pixels (to the resizers' rounding), and the
EMA warm-up of archc.ir.recipe.ema_decay_at."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from archc.backends.keras_backend import train as keras_train  # noqa: E402
from archc.backends.torch_backend import train as torch_train  # noqa: E402
from archc.ir.recipe import EMA, Augment, LearningRate, Optimizer, Training, ema_decay_at  # noqa: E402
from archc.training.kit import SYNTHETIC, DataSource, central_box, crop_draws, random_box  # noqa: E402

AUGMENT = Augment()
RECIPE = Training(
    optimizer=Optimizer(kind="sgd", momentum=0.0),
    learning_rate=LearningRate(initial=0.1),
    batch_size=4,
    epochs=1,
    ema=EMA(decay=0.9),
    augment=AUGMENT,
)


def test_both_trainers_compute_the_same_crop_boxes():
    sizes = [(375, 500), (500, 375), (8, 8), (1, 640), (299, 299), (1024, 77)]
    draws = crop_draws(300, epoch=1, seed=3)
    for height, width in sizes:
        expected = [random_box(height, width, d, AUGMENT.crop_area, AUGMENT.crop_aspect) for d in draws]
        # every op of tf_random_box is elementwise: all draws at once, one per column
        found = keras_train.tf_random_box(tf, height, width, tf.constant(draws.T), AUGMENT.crop_area, AUGMENT.crop_aspect).numpy()
        assert [tuple(b) for b in found.T.tolist()] == expected, (height, width)
        for fraction in (0.875, 0.5, 1.0):
            assert tuple(keras_train.tf_central_box(tf, height, width, fraction).numpy().tolist()) == central_box(height, width, fraction)


def gradient_folder(root):
    """Two classes of JPEG and PNG images whose pixels say where they are (red: x, green: y)."""
    from PIL import Image

    for label, (h, w) in enumerate([(120, 160), (150, 100)]):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 60 * label)], -1).astype(np.uint8)
        (root / f"c{label}").mkdir(parents=True)
        Image.fromarray(pixels).save(root / f"c{label}" / "a.png")
        Image.fromarray(pixels).save(root / f"c{label}" / "b.jpg", quality=98)
    files = sorted(str(p) for p in root.glob("*/*"))
    return DataSource("folder", len(files), 32, 32, 3, 2, files, [int("c1" in f) for f in files], ["c0", "c1"], seed=0)


def test_both_trainers_crop_flip_and_resize_the_same_pixels(tmp_path):
    source = gradient_folder(tmp_path)
    index = np.arange(source.size)
    flipped = np.array([False, True, False, True])
    draws = crop_draws(source.size, epoch=0, seed=11)
    torch_samples = torch_train.Samples(source, RECIPE)
    for fraction, keras_draws in ((None, draws), (0.875, None)):
        ds = keras_train._images(tf, source, RECIPE, index, flipped if fraction is None else np.zeros(4, bool), keras_draws, fraction)
        for i, (image, label, _) in enumerate(ds):
            item = (i, bool(flipped[i]), tuple(draws[i].tolist())) if fraction is None else (i, False, fraction)
            mine, my_label = torch_samples[item]
            assert image.dtype == tf.uint8 and mine.dtype == torch.uint8 and int(label) == my_label
            difference = np.abs(image.numpy().astype(int) - mine.numpy().astype(int))
            assert difference.mean() < 2.5 and difference.max() < 40, (fraction, i, difference.mean(), difference.max())


def test_reduced_size_jpeg_decode_keeps_the_boxes_in_both_trainers(tmp_path):
    """A folder of JPEGs only, large against the input: both trainers decode at 1/2 .. 1/8
    (simplejpeg / tf.data's ratio, no format check in the Keras graph) and still agree with
    each other and with Pillow's full-size decode (trainkit.load_image)."""
    from PIL import Image

    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)
    files = []
    for k in range(4):
        files.append(str(tmp_path / f"{k}.jpg"))
        Image.fromarray(pixels).save(files[-1], quality=95)
    source = DataSource("folder", 4, 32, 32, 3, 2, files, [0, 1, 0, 1], ["a", "b"])
    index, flipped = np.arange(4), np.array([False, True, True, False])
    draws = crop_draws(4, epoch=0, seed=5)
    torch_samples = torch_train.Samples(source, RECIPE)
    for fraction, keras_draws in ((None, draws), (0.875, None), (1.0, None)):
        flips = flipped if fraction is None else np.zeros(4, bool)
        ds = keras_train._images(tf, source, RECIPE, index, flips, keras_draws, fraction)
        for i, (image, _, _) in enumerate(ds):
            item = (i, bool(flips[i]), tuple(draws[i].tolist()) if fraction is None else fraction)
            mine = torch_samples[item][0].numpy().astype(int)
            draw = draws[i]

            def box(hh, ww, draw=draw, fraction=fraction):
                return (
                    random_box(hh, ww, draw, AUGMENT.crop_area, AUGMENT.crop_aspect) if fraction is None else central_box(hh, ww, fraction)
                )

            pillow = source.load(i, box, bool(flips[i])).astype(int)
            for other in (image.numpy().astype(int), pillow):
                difference = np.abs(other - mine)
                assert difference.mean() < 2.5 and difference.max() < 40, (fraction, i, difference.mean(), difference.max())


def test_both_trainers_make_the_same_synthetic_batches():
    source = DataSource(SYNTHETIC, 64, 9, 7, 3, 5, seed=4)
    index = np.array([3, 17, 40, 63, 0, 5], np.int64)
    expected = source.tables().batch(index)
    x, y = torch_train.SyntheticBatches(source, torch.device("cpu"))(index)
    assert torch.equal(x, torch.from_numpy(expected)) and y.tolist() == (index % 5).tolist()
    (kx, ky, skipped), *_ = list(keras_train._batches(tf, source, RECIPE, index, None, None, 6, True))
    assert np.array_equal(kx.numpy(), expected) and ky.numpy().tolist() == (index % 5).tolist() and not skipped.numpy().any()


def expected_ema(history, decay):
    """The average from the initial weights, step t mixing in with ema_decay_at(decay, t)."""
    average = history[0]
    for t, w in enumerate(history[1:], start=1):
        keep = ema_decay_at(decay, t)
        average = keep * average + (1 - keep) * w
    return average


def test_torch_ema_warms_up_from_the_initial_weights():
    net = torch.nn.Linear(3, 2)
    ema = torch_train.make_ema(RECIPE, net)
    history = [net.weight.detach().clone().double()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(7):
        optimizer.zero_grad()
        net(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        ema.update_parameters(net)
        history.append(net.weight.detach().clone().double())
        torch.testing.assert_close(ema.module.weight.double(), expected_ema(history, 0.9), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ema.module.weight, net.weight)  # an average, not a copy


def test_keras_ema_warms_up_from_the_initial_weights():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras_train.make_optimizer(RECIPE, 0.5)
    optimizer.build(model.trainable_variables)
    keras_train.start_ema(model, optimizer)
    kernel = model.trainable_variables[0]
    history = [kernel.numpy().astype(np.float64)]
    for _ in range(7):
        x = tf.random.normal((4, 3))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        history.append(kernel.numpy().astype(np.float64))
        np.testing.assert_allclose(optimizer._model_variables_moving_average[0].numpy(), expected_ema(history, 0.9), rtol=1e-5, atol=1e-6)


def test_both_trainers_decode_every_image_mode_to_the_same_pixels(tmp_path):
    """8-bit RGB, grey, palette, alpha, 16-bit grey PNGs and a CMYK JPEG: both loaders give
    the same RGB pixels (within one grey level), and those of the usual conversion
    (torchvision's and tf.io's): grey replicated, palette looked up, alpha dropped, the high
    byte of a 16-bit value. Pillow's own convert would clip 16-bit grey to near-white."""
    from PIL import Image

    h = w = 32
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)
    folder = tmp_path / "c0"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full((h, w), 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    files = sorted(str(p) for p in folder.iterdir())
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    source = DataSource("folder", len(files), h, w, 3, 1, files, [0] * len(files), ["c0"], seed=0)
    grey = np.asarray(Image.open(folder / "grey.png"))
    expected = {
        "rgb.png": rgb,
        "alpha.png": rgb,
        "grey.png": np.repeat(grey[:, :, None], 3, -1),
        "palette.png": np.asarray(Image.open(folder / "palette.png").convert("RGB")),
        "sixteen.png": np.repeat(rgb[:, :, :1], 3, -1),
        "cmyk.jpg": rgb,
    }
    tolerance = {"cmyk.jpg": 3}  # JPEG's rounding
    ds = keras_train._images(tf, source, RECIPE, np.arange(len(files)), np.zeros(len(files), bool), None, 1.0)
    samples = torch_train.Samples(source, RECIPE)
    for i, (image, _, _) in enumerate(ds):
        name = os.path.basename(files[i])
        mine = samples[(i, False, 1.0)][0].numpy().astype(int)
        mine = mine.transpose(1, 2, 0) if mine.shape[0] == 3 else mine
        theirs = image.numpy().astype(int)
        assert np.abs(theirs - mine).max() <= 1, name
        assert np.abs(mine - expected[name]).max() <= tolerance.get(name, 1), name


def test_the_keras_pipeline_skips_and_counts_a_file_that_fails_to_decode(tmp_path):
    """It passed the check before step 1; tf.data drops it, the next element says so,
    and the batches stay whole (a spare stands in at the end)."""
    from imagefolder import damaged_png, make_image_folder

    from archc.training.kit import DataSource, scan_image_folder, unreadable_images

    root = make_image_folder(tmp_path / "data", per_class=2)
    damaged_png(root / "red" / "1damaged.png")
    names, files, labels = scan_image_folder(root)
    assert unreadable_images(files) == []
    source = DataSource("folder", len(files), 16, 16, 3, 4, files, labels, names)
    order = np.arange(len(files))
    batches = list(keras_train.train_pipeline(tf, source, RECIPE, order, np.zeros(len(files), bool), None, 2, 0, 4, 1, 0, 4))
    assert [len(y) for _, y, _ in batches] == [4, 4]
    assert sum(int(s.numpy().sum()) for _, _, s in batches) == 1
    taken = [int(v) for _, y, _ in batches for v in y.numpy()]
    assert len(taken) == 8 and files.index(str(root / "red" / "1damaged.png")) < 8
