"""The framework-free parts of `archc train`: the recipe's numbers, which samples each
replica sees, atomic files, resumable logs, data listing, and the command's checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from archc.cli import main
from archc.ir.recipe import DEFAULT_TRAINING, Augment, LearningRate, Optimizer, Training, ema_decay_at, learning_rate_at
from archc.syntax.errors import UserError
from archc.training.kit import (
    MetricLog,
    RunConfig,
    Schedule,
    SyntheticTables,
    atomic_write,
    central_box,
    compile_model,
    crop_draws,
    epoch_order,
    load_image,
    parse_image_size,
    random_box,
    replica_indices,
    scan_image_folder,
)

ROOT = Path(__file__).parents[1]
XCEPTION = str(ROOT / "specs/xception.yaml")


def recipe(**lr) -> Training:
    return Training(optimizer=Optimizer(kind="sgd"), learning_rate=LearningRate(**lr), batch_size=32, epochs=100)


def test_staircase_decay_in_epochs_and_in_samples():
    lr = LearningRate(initial=0.045, decay=0.94, every_epochs=2)  # the paper's ImageNet schedule
    assert learning_rate_at(lr, 0, 1000) == 0.045
    assert learning_rate_at(lr, 1999, 1000) == 0.045
    assert learning_rate_at(lr, 2000, 1000) == pytest.approx(0.045 * 0.94)
    assert learning_rate_at(lr, 9000, 1000) == pytest.approx(0.045 * 0.94**4)
    jft = LearningRate(initial=0.001, decay=0.9, every_samples=3_000_000)  # the JFT one
    assert learning_rate_at(jft, 2_999_999, 10**9) == 0.001
    assert learning_rate_at(jft, 6_000_000, 10**9) == pytest.approx(0.001 * 0.81)
    assert learning_rate_at(LearningRate(initial=0.1), 10**12, 1000) == 0.1


def test_warmup_rises_linearly_to_the_staircase():
    lr = LearningRate(initial=0.8, decay=0.5, every_epochs=1, warmup_epochs=0.5)
    assert learning_rate_at(lr, 0, 1000, 100) == pytest.approx(0.8 * 100 / 500)
    assert learning_rate_at(lr, 400, 1000, 100) == pytest.approx(0.8)
    assert learning_rate_at(lr, 1000, 1000, 100) == pytest.approx(0.4)


def test_schedule_counts_global_batches_and_drops_the_tail():
    s = Schedule(recipe(initial=0.045, decay=0.94, every_epochs=2), dataset_size=1000, replicas=3)
    assert (s.global_batch, s.steps_per_epoch, s.samples_per_epoch) == (96, 10, 960)
    assert s.total_steps() == 1000 and s.total_steps(max_steps=7) == 7
    assert s.learning_rate(19) == 0.045 and s.learning_rate(20) == pytest.approx(0.045 * 0.94)
    half = Schedule(recipe(initial=0.1).model_copy(update={"epochs": 2.5}), dataset_size=1000, replicas=3)
    assert half.total_steps() == 25
    with pytest.raises(UserError, match="at least one global batch"):
        Schedule(recipe(initial=0.1), dataset_size=95, replicas=3).check()


def test_replicas_split_each_global_batch_without_overlap():
    order = epoch_order(100, epoch=3, seed=7)
    assert sorted(order) == list(range(100)) and list(order) == list(epoch_order(100, 3, 7))
    assert list(order) != list(epoch_order(100, 4, 7))
    for step in range(3):
        parts = [replica_indices(order, step, 32, 8, r) for r in range(4)]
        joined = np.concatenate(parts)
        assert len(set(joined)) == 32 and list(joined) == list(order[step * 32 : step * 32 + 32])


def test_atomic_write_never_leaves_a_half_file(tmp_path):
    target = tmp_path / "ckpt" / "latest.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old"))

    def crash(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["latest.bin"]
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_a_resumed_log_drops_the_rows_after_its_checkpoint(tmp_path, capsys):
    log = MetricLog(tmp_path, 0)
    for step in range(1, 6):
        log.train(step, step / 10, step * 8, 1.0 / step, 0.1, 100.0, step, 10)
    assert "step 5/10  epoch 0.50  loss 0.2000  lr 0.1  100.0 img/s" in capsys.readouterr().out
    MetricLog(tmp_path, 3)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,samples,loss,lr,images_per_s") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_image_folder_listing(tmp_path):
    for cls, files in {"b_dog": ["1.JPG", "2.png", "notes.txt"], "a_cat": ["x.jpeg", ".hidden.png"], ".git": ["y.png"]}.items():
        (tmp_path / cls).mkdir()
        for f in files:
            (tmp_path / cls / f).write_bytes(b"")
    names, files, labels = scan_image_folder(tmp_path)
    assert names == ["a_cat", "b_dog"]
    assert [Path(f).name for f in files] == ["x.jpeg", "1.JPG", "2.png"] and labels == [0, 1, 1]
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(UserError, match="found none in c_empty"):
        scan_image_folder(tmp_path)


def test_synthetic_source_is_deterministic_and_learnable():
    tables = SyntheticTables.make(4, 8, 8, 3, seed=0)
    a = tables.batch([5, 1, 2])
    assert a.dtype == np.uint8 and a.shape == (3, 8, 8, 3)
    assert (a == SyntheticTables.make(4, 8, 8, 3, seed=0).batch([5, 1, 2])).all()
    assert (a[0] != SyntheticTables.make(4, 8, 8, 3, seed=1).batch([5])[0]).any()  # another seed, other samples
    same_class = [m.mean(axis=(0, 1)) for m in tables.batch([1, 5, 9])]
    other = tables.batch([2])[0].mean(axis=(0, 1))
    assert max(np.abs(c - same_class[0]).max() for c in same_class) < np.abs(other - same_class[0]).max()


def test_inception_crop_boxes_are_seeded_and_follow_the_recipe():
    augment = Augment()
    assert (augment.crop_area, augment.crop_aspect, augment.eval_crop) == ((0.08, 1.0), (0.75, 4 / 3), 0.875)
    draws = crop_draws(2000, epoch=3, seed=7)
    assert (draws == crop_draws(2000, epoch=3, seed=7)).all() and not (draws == crop_draws(2000, epoch=4, seed=7)).all()
    boxes = np.array([random_box(375, 500, d, augment.crop_area, augment.crop_aspect) for d in draws])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 375).all() and (left + w <= 500).all()
    area, aspect = h * w / (375 * 500), w / h
    assert area.min() > 0.075 and area.max() <= 1 and aspect.min() > 0.74 and aspect.max() < 1.35
    assert 0.45 < area.mean() < 0.6  # uniform over [0.08, 1] but for the boxes shrunk to fit
    assert abs(np.log(aspect).mean()) < 0.02 and len({tuple(b) for b in boxes}) > 1900  # log-uniform, centred on square
    assert central_box(375, 500, 0.875) == (23, 31, 329, 438) and central_box(8, 8, 0.875) == (0, 0, 8, 8)


def test_load_image_crops_then_resizes_with_reduced_size_decode(tmp_path):
    from PIL import Image

    yy, xx = np.mgrid[0:600, 0:800]
    Image.fromarray(np.stack([xx * 255 // 799, yy * 255 // 599, np.zeros_like(xx)], -1).astype(np.uint8)).save(
        tmp_path / "g.jpg", quality=95
    )
    whole = load_image(str(tmp_path / "g.jpg"), 60, 80)
    assert whole.shape == (60, 80, 3) and whole.flags.writeable
    right_half = load_image(str(tmp_path / "g.jpg"), 60, 40, box=lambda h, w: (0, w // 2, h, w // 2))
    assert abs(int(right_half[:, 0, 0].mean()) - 128) < 6 and abs(int(right_half[:, -1, 0].mean()) - 252) < 6  # red: x
    assert abs(int(right_half[0, :, 1].mean()) - 2) < 6 and abs(int(right_half[-1, :, 1].mean()) - 253) < 6  # green: y


def test_ema_warm_up_follows_tensorflows_num_updates():
    assert ema_decay_at(0.9999, 1) == 2 / 11 and ema_decay_at(0.9999, 90) == 0.91
    assert ema_decay_at(0.9999, 89_990) == pytest.approx(0.9999) and ema_decay_at(0.9999, 10**6) == 0.9999


def test_image_size_and_recipe_overrides():
    assert parse_image_size("64") == (64, 64) and parse_image_size("96x128") == (96, 128)
    with pytest.raises(UserError, match="expected H or HxW"):
        parse_image_size("big")
    config = RunConfig(
        XCEPTION,
        "synthetic",
        Path("out"),
        params={"middle_repeats": "1", "classes": "4"},
        image_size=(64, 80),
        epochs=3,
        batch_size=8,
        lr=0.01,
    )
    analysis, training = compile_model(config)
    assert analysis.net.input == (64, 80, 3) and analysis.output == (4,)
    assert analysis.net.params["dropout"] == 0.5  # the recipe's dropout sets the spec's param
    assert (training.epochs, training.batch_size, training.learning_rate.initial, training.learning_rate.decay) == (3, 8, 0.01, 0.94)
    explicit = RunConfig(XCEPTION, "synthetic", Path("out"), params={"dropout": "0.2"})
    assert compile_model(explicit)[0].net.params["dropout"] == 0.2
    # a spec without training: trains with the documented default recipe, overrides applied
    _, default = compile_model(RunConfig(str(ROOT / "specs/inception_v3_slim.yaml"), "synthetic", Path("out"), epochs=2))
    assert default == DEFAULT_TRAINING.model_copy(update={"epochs": 2})
    assert (default.optimizer.kind, default.learning_rate.initial, default.batch_size) == ("sgd", 0.1, 32)


def test_train_command_checks_before_importing_a_framework(tmp_path):
    result = CliRunner().invoke(main, ["train", XCEPTION, "--data", "synthetic", "-o", str(tmp_path), "--backend", "jax"])
    assert result.exit_code == 2 and "expected a backend (keras, torch), found 'jax'" in result.output
    code = (
        "import sys, json; from archc.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit: pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "--data synthetic|PATH" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _bad_image_folder(root: Path) -> Path:
    """Two classes of good images in every mode the loaders convert, one empty .jpg and
    one truncated JPEG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(pixels).save(root / name / "rgb.jpg")
        Image.fromarray(pixels).convert("L").save(root / name / "gray.png")
        Image.fromarray(pixels).convert("P").save(root / name / "palette.png")
        Image.fromarray(pixels).convert("RGBA").save(root / name / "alpha.png")
        Image.fromarray(pixels).convert("CMYK").save(root / name / "cmyk.jpg")
        Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257).save(root / name / "sixteen.png")
    (root / "a" / "empty.jpg").write_bytes(b"")
    whole = (root / "b" / "rgb.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(whole[:-40])  # the header whole, the end cut off
    return root


def test_unreadable_images_are_found_before_training(tmp_path):
    from archc.training.kit import scan_image_folder, unreadable_images

    root = _bad_image_folder(tmp_path / "data")
    _, files, _ = scan_image_folder(root)
    bad = {Path(f).relative_to(root).as_posix(): why for f, why in unreadable_images(files)}
    assert bad == {"a/empty.jpg": "empty", "b/truncated.jpg": "truncated"}  # every mode of the good ones passes
    (root / "a" / "text.png").write_text("not a picture")
    _, files, _ = scan_image_folder(root)
    assert dict((Path(f).name, why) for f, why in unreadable_images(files))["text.png"] == "not an image"


def test_a_folder_with_bad_images_is_refused_with_the_list_or_trained_without_them(tmp_path):
    root = _bad_image_folder(tmp_path / "data")
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [16, 16, 3]\nflows:\n  main: [conv: {filters: 4, kernel: 3}, global_avg_pool, dense: 2]\n")

    def train(*args):
        return CliRunner().invoke(main, ["train", str(spec), "--data", str(root), "-o", str(tmp_path / "run"), "--max-steps", "1", *args])

    refused = train()
    assert refused.exit_code == 2, refused.output
    (message,) = [line for line in refused.output.splitlines() if line.strip()]
    assert "found 2 of 14 files that are not: a/empty.jpg (empty); b/truncated.jpg (truncated); pass --bad-images skip" in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before step 1

    skipped = train("--bad-images", "skip", "--batch-size", "4")
    assert skipped.exit_code == 0, skipped.output
    assert "image folder: 12 images of 2 classes (2 unreadable files skipped)" in skipped.output
