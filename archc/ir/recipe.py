"""The ``training:`` section of a spec: the recipe the generated code trains with.

Validated like the rest of the spec (unknown keys rejected, located errors). Backends'
trainers read it; nothing here imports a framework.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Optimizer(_Strict):
    """SGD with momentum (the paper's ImageNet recipe) or RMSprop with momentum (JFT)."""

    kind: Literal["sgd", "rmsprop"]
    momentum: Fraction = 0.9
    nesterov: Annotated[bool, Field(strict=True)] = False  # sgd only
    rho: Fraction = 0.9  # rmsprop: decay of the squared-gradient average
    epsilon: Positive = 1.0  # rmsprop: TF-slim's Inception recipe uses 1.0


class LearningRate(_Strict):
    """Staircase exponential decay: ``initial * decay ** floor(progress / every)``,
    progress counted in epochs or in samples seen (global, over all replicas)."""

    initial: Positive
    decay: Annotated[float, Field(gt=0, le=1)] = 1.0
    every_epochs: Positive | None = None
    every_samples: Annotated[int, Field(strict=True, ge=1)] | None = None
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0  # linear warm-up, for large global batches

    @model_validator(mode="after")
    def _one_period(self):
        if self.decay < 1 and (self.every_epochs is None) == (self.every_samples is None):
            raise ValueError("exactly one of every_epochs and every_samples with a decay below 1")
        return self


class EMA(_Strict):
    """Polyak averaging: an exponential moving average of the weights, used to evaluate,
    with TensorFlow's warm-up (:func:`ema_decay_at`)."""

    decay: Annotated[float, Field(gt=0, lt=1)] = 0.9999


class Augment(_Strict):
    """Inception-style augmentation (Szegedy et al. 2015, "Going deeper with convolutions",
    section 6; torchvision's RandomResizedCrop and timm use the same defaults): train on a
    random box of ``crop_area`` of the image's area (uniform) and aspect ratio in
    ``crop_aspect`` (log-uniform), resized to the input, flipped left-right at random;
    evaluate on the central ``eval_crop`` of each side (0.875, TF-slim's Inception
    evaluation), resized to the input."""

    crop_area: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.08, 1.0)
    crop_aspect: tuple[Positive, Positive] = (3 / 4, 4 / 3)
    flip: Annotated[bool, Field(strict=True)] = True
    eval_crop: Annotated[float, Field(gt=0, le=1)] = 0.875

    @model_validator(mode="after")
    def _ordered(self):
        for name in ("crop_area", "crop_aspect"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: expected [low, high] with low <= high, found [{low}, {high}]")
        return self


class Training(_Strict):
    optimizer: Optimizer
    learning_rate: LearningRate
    weight_decay: Annotated[float, Field(ge=0)] = 0.0  # L2 on conv and dense kernels, as in the paper
    dropout: Fraction | None = None  # the value of the spec's `dropout` param while training
    label_smoothing: Fraction = 0.0
    batch_size: Annotated[int, Field(strict=True, ge=1)]  # per replica (process / device)
    epochs: Annotated[float, Field(gt=0)]
    ema: EMA | None = None
    augment: Augment | None = None  # None: the whole image resized, random flips (train); resized (eval)


# The recipe of a spec without ``training:``: torchvision's ResNet reference recipe
# (references/classification: SGD with momentum 0.9, learning rate 0.1 divided by 10 every
# 30 epochs, weight decay 1e-4, 32 images per replica, 90 epochs), with the
# random-resized-crop augmentation and 0.875 central evaluation crop it uses. A starting
# point, not a tuned recipe: --epochs, --batch-size and --lr override it as they do a spec's.
DEFAULT_TRAINING = Training(
    optimizer=Optimizer(kind="sgd", momentum=0.9),
    learning_rate=LearningRate(initial=0.1, decay=0.1, every_epochs=30),
    weight_decay=1e-4,
    batch_size=32,
    epochs=90,
    augment=Augment(),
)


# -- the recipe as numbers: what both trainers compute, with no framework --------------------


def decay_period(lr: LearningRate, samples_per_epoch: float) -> float | None:
    """Samples between two decays of the staircase (``None``: the rate never decays)."""
    if lr.decay >= 1:
        return None
    return float(lr.every_samples) if lr.every_samples is not None else lr.every_epochs * samples_per_epoch


def learning_rate_at(lr: LearningRate, samples_seen: float, samples_per_epoch: float, batch: int = 0) -> float:
    """The learning rate of a step that starts after ``samples_seen`` samples (global: all
    replicas together) and trains on ``batch`` more (the global batch).

    Staircase exponential decay, ``initial * decay ** floor(samples_seen / period)``, the
    period being ``every_epochs * samples_per_epoch`` or ``every_samples``; so step ``i``
    of a run with global batch ``G`` uses ``learning_rate_at(lr, i * G, samples_per_epoch, G)``.
    With ``warmup_epochs``, the rate is scaled by ``min(1, (samples_seen + batch) / warm-up
    samples)``: it rises linearly and reaches the staircase value at the end of warm-up.
    """
    rate = lr.initial
    period = decay_period(lr, samples_per_epoch)
    if period is not None:
        rate *= lr.decay ** math.floor(samples_seen / period)
    if lr.warmup_epochs > 0:
        rate *= min(1.0, (samples_seen + batch) / (lr.warmup_epochs * samples_per_epoch))
    return rate


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay of the update after optimizer step ``step`` (1, 2, ...):
    ``min(decay, (1 + step) / (10 + step))``, ``tf.train.ExponentialMovingAverage``'s
    ``num_updates`` warm-up that the Inception and Xception TensorFlow recipes use. The
    average starts from the initial weights; early on it follows the weights closely, so
    evaluating it means something at any step, and it reaches ``decay`` after
    ``(10 * decay - 1) / (1 - decay)`` steps (89,990 for 0.9999)."""
    return min(decay, (1 + step) / (10 + step))
