"""The training plan: its settings (``TrainConfig``), how many optimiser steps and which
batches a labeled set gets, the stratified holdout that chooses the step count, and the
class weights of the loss. Pure arithmetic over sizes and labels, apart from the loop
in ``training`` that runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from connector.contracts.errors import ConfigError
from connector.learning.device import DEVICES


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``None`` sizes adapt to the labeled set (see ``plan_schedule``).

    Attributes:
        epochs: passes over the training part; ``None`` = at least ``min_steps``
            optimiser steps and about 20 epochs on large sets, capped at ``max_steps``.
        batch_size: ``None`` = 16 below 64 labels, 32 below 256, 64 below 2,048, else 128.
        lr: peak learning rate of the one-cycle schedule (the head's, with pretrained
            weights the backbone gets ``lr * backbone_lr_scale``).
        holdout_fraction: part of the labeled set held out to choose the number of steps
            (early stopping in a trial run, then a retrain on every label), used only when
            it holds at least ``min_holdout`` items and the plan has more than
            ``min_steps`` steps to cut (never with ``epochs`` or a given validation set).
        patience: evaluations on the holdout without improvement before stopping (the
            holdout is evaluated about 15 times per run).
        class_weighting: ``"balanced"`` weights the loss by inverse class frequency.
        device: ``"auto"`` (a CUDA GPU when torch sees one), ``"cpu"`` or ``"cuda"``
            (``learning.device``).
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    patience: int = 5
    holdout_fraction: float = 0.1
    min_holdout: int = 30
    class_weighting: Literal["balanced", "none"] = "balanced"
    augment: bool = True
    hflip: bool = False
    label_smoothing: float = 0.0
    min_steps: int = 150
    max_steps: int = 600
    backbone_lr_scale: float = 0.1
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.class_weighting not in ("balanced", "none"):
            raise ConfigError(
                f"class_weighting must be 'balanced' or 'none', got {self.class_weighting!r}"
            )
        if not 0.0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"holdout_fraction must be in [0, 0.5), got {self.holdout_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or unset, got {value}")


def plan_schedule(n_train: int, cfg: TrainConfig) -> tuple[int, int]:
    """(batch size, optimiser steps) for ``n_train`` training items."""
    if cfg.batch_size is not None:
        bs = cfg.batch_size
    else:
        bs = 16 if n_train < 64 else 32 if n_train < 256 else 64 if n_train < 2048 else 128
    bs = max(1, min(bs, n_train))
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * n_train / bs)
    else:
        steps = min(cfg.max_steps, max(cfg.min_steps, math.ceil(20 * n_train / bs)))
    return bs, max(1, steps)


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``[C]`` (mean 1 over present classes; 0 when absent)."""
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    present = counts > 0
    w = torch.zeros(num_classes)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def stratified_holdout(
    y: np.ndarray, fraction: float, min_holdout: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, holdout indices); holdout empty when it would be < ``min_holdout``.

    Every class keeps at least two training items: classes with fewer than 3 labels give
    nothing to the holdout.
    """
    n = len(y)
    if fraction <= 0 or round(n * fraction) < min_holdout:
        return np.arange(n), np.empty(0, dtype=np.int64)
    hold: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = min(round(len(idx) * fraction), len(idx) - 2)
        if take > 0:
            hold.append(rng.choice(idx, size=take, replace=False))
    holdout = np.sort(np.concatenate(hold)) if hold else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(n), holdout)
    return train, holdout.astype(np.int64)


def batch_indices(n: int, bs: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Index batches of consecutive random permutations (every item once per epoch)."""
    need = bs * steps
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))]
    flat = torch.cat(perms)[:need]
    return list(flat.view(steps, bs))


def refit_steps(trial: dict[str, Any], n_trial: int, n_all: int, cfg: TrainConfig) -> int:
    """Steps on ``n_all`` labels for as many epochs as the trial's best step on ``n_trial``,
    within [``min_steps``, the plan for ``n_all``]: a noisy holdout may shorten the plan,
    never below the floor that small sets get."""
    bs, planned = plan_schedule(n_all, cfg)
    epochs = trial["best_step"] * trial["batch_size"] / n_trial
    return int(min(planned, max(cfg.min_steps, math.ceil(epochs * n_all / bs))))
