"""Semi-supervised training on the unlabeled pool: FixMatch-style consistency.

FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", NeurIPS): for each unlabeled image, the model's prediction on
a *weakly* augmented view becomes a hard pseudo-label when its confidence reaches
``threshold``, and the model is trained to predict that label on a *strongly* augmented
view of the same image. The unlabeled term is added to every supervised step:

    loss = CE(labeled)
         + weight * mean_u[ 1{max p(weak_u) >= threshold} * CE(strong_u, argmax p(weak_u)) ]

Weak = ``images.random_affine`` (the supervised augmentation). Strong (``strong_augment``)
must make sense for 1-channel images too (digits, scans), so it uses no colour operations:
a larger affine (rotation, shift, zoom, shear), random contrast and brightness, and a
cutout square (Cutout, DeVries and Taylor 2017), the grey-level parts of RandAugment.

The unlabeled images of one training run are ``SemiConfig.max_unlabeled`` images drawn
from the ``UnlabeledPool`` with a seeded generator, decoded in memory and dropped with the
run: nothing is written to disk, the labeled cache never sees them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from connector.contracts.errors import ConfigError
from connector.contracts.learner import UnlabeledPool
from connector.learning.images import (
    Decoder,
    ImageSource,
    decode_many,
    infer_channels,
    random_affine,
    to_float,
)
from connector.learning.model import Classifier, ModelSpec

log = logging.getLogger(__name__)

SemiMode = Literal["none", "fixmatch"]
SEMI_MODES: tuple[str, ...] = ("none", "fixmatch")


@dataclass(frozen=True)
class SemiConfig:
    """How to use the unlabeled pool while training (``mode="none"``: not at all).

    Attributes:
        mode: ``"fixmatch"`` or ``"none"``.
        threshold: confidence of the weak view's prediction needed for a pseudo-label.
        weight: weight of the unlabeled term (FixMatch's lambda_u).
        ratio: unlabeled images per labeled image in a step (FixMatch's mu); the CPU cost
            of a step grows about as ``1 + 1.3 * ratio``.
        max_unlabeled: pool images drawn per training run (decoded in memory).
        min_steps: floor of the optimiser steps of a run (``TrainConfig.min_steps``): the
            unlabeled term needs more steps than the labels alone to pay off.

    Defaults measured on the digits (30 and 60 labels, 16 px, ``al-connector`` small CNN):
    threshold 0.8 passes about half of the pool, where the paper's 0.95 passed a tenth
    in a CPU-sized run and added nothing; 300 steps rather than 150 (docs/model.md).
    """

    mode: SemiMode = "none"
    threshold: float = 0.8
    weight: float = 1.0
    ratio: int = 3
    max_unlabeled: int = 2000
    min_steps: int = 300

    def __post_init__(self) -> None:
        if self.mode not in SEMI_MODES:
            raise ConfigError(
                f"semi_supervised must be one of {', '.join(SEMI_MODES)}, got {self.mode!r}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"semi_threshold must be in (0, 1], got {self.threshold}")
        if self.weight < 0:
            raise ConfigError(f"semi_weight must be >= 0, got {self.weight}")
        if self.ratio < 1:
            raise ConfigError(f"semi_ratio must be >= 1, got {self.ratio}")
        if self.max_unlabeled < 1:
            raise ConfigError(f"semi_max_unlabeled must be >= 1, got {self.max_unlabeled}")
        if self.min_steps < 1:
            raise ConfigError(f"semi_min_steps must be >= 1, got {self.min_steps}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def strong_augment(
    x_B_C_H_W: torch.Tensor, generator: torch.Generator, *, hflip: bool = False
) -> torch.Tensor:
    """A strongly augmented copy of a normalised float batch ``[B, C, H, W]``.

    Larger affine than the weak view (rotation up to 25 degrees, shift up to 15 %, zoom
    0.8-1.2, shear up to 0.2), then per-image contrast (x0.5-1.5 about the image mean)
    and brightness (+-0.5 normalised units), then one cutout square of 30-50 % of the side
    set to 0 (the dataset mean). Every draw comes from ``generator``. Returns a new tensor.
    """
    b, _, h, w = x_B_C_H_W.shape
    if b == 0:
        return x_B_C_H_W.clone()
    u = torch.rand((b, 5), generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(25.0)
    scale = 0.8 + u[:, 1] * 0.4
    tx = (u[:, 2] * 2 - 1) * 0.15 * 2
    ty = (u[:, 3] * 2 - 1) * 0.15 * 2
    shear = (u[:, 4] * 2 - 1) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.ones(b)
    if hflip:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin + shear, tx], dim=1),
            torch.stack([sin * flip, cos, ty], dim=1),
        ],
        dim=1,
    ).to(x_B_C_H_W.dtype)
    grid = F.affine_grid(theta, list(x_B_C_H_W.shape), align_corners=False)
    x = F.grid_sample(x_B_C_H_W, grid, padding_mode="border", align_corners=False)
    v = torch.rand((b, 2), generator=generator)
    contrast = (0.5 + v[:, 0]).view(b, 1, 1, 1)
    bright = ((v[:, 1] * 2 - 1) * 0.5).view(b, 1, 1, 1)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - centre) * contrast + centre + bright
    side = (0.3 + torch.rand(b, generator=generator) * 0.2) * min(h, w)
    cy = torch.rand(b, generator=generator) * h
    cx = torch.rand(b, generator=generator) * w
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    half = (side / 2).view(b, 1, 1)
    hole = ((rows - cy.view(b, 1, 1)).abs() < half) & ((cols - cx.view(b, 1, 1)).abs() < half)
    return x.masked_fill(hole.unsqueeze(1), 0.0)


def fixmatch_loss(
    logits_weak_B_C: torch.Tensor, logits_strong_B_C: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mask ``[B]``): FixMatch's unlabeled term and which items got a pseudo-label.

    The pseudo-label is the argmax of the weak view's softmax (no gradient flows through
    it); items whose top probability is below ``threshold`` contribute 0. The loss is the
    mean over *all* ``B`` items (as in the paper), so it shrinks while few items pass.
    """
    with torch.no_grad():
        probs = logits_weak_B_C.detach().softmax(dim=1)
        conf, pseudo = probs.max(dim=1)
        mask = (conf >= threshold).to(logits_strong_B_C.dtype)
    ce = F.cross_entropy(logits_strong_B_C, pseudo, reduction="none")
    return (ce * mask).mean(), mask


@dataclass
class FixMatch:
    """The unlabeled term of one training run, added to every supervised step.

    ``x_unl`` (``uint8 [M, C, H, W]``) is the run's decoded unlabeled sample. Called as
    ``term(model, labeled_batch_size, mean, std, generator)`` -> scalar loss; it draws
    ``ratio * labeled_batch_size`` images per step from ``generator``. The weak view is
    predicted without gradient (in training mode, as the supervised batch); the strong
    view is trained. ``stats()`` reports how many pseudo-labels passed the threshold.
    """

    x_unl: torch.Tensor
    cfg: SemiConfig
    hflip: bool = False
    _steps: int = field(default=0, repr=False)
    _passed: float = field(default=0.0, repr=False)
    _seen: int = field(default=0, repr=False)

    def __call__(
        self,
        model: Classifier,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        m = len(self.x_unl)
        n = min(m, self.cfg.ratio * batch_size)
        idx = torch.randint(m, (n,), generator=generator)
        xu = to_float(self.x_unl[idx], mean, std)
        dev = next(model.parameters()).device  # views drawn on the CPU, run on the model's
        weak = random_affine(xu, generator, hflip=self.hflip).to(dev)
        strong = strong_augment(xu, generator, hflip=self.hflip).to(dev)
        with torch.no_grad():
            logits_weak = model(weak)
        loss, mask = fixmatch_loss(logits_weak, model(strong), self.cfg.threshold)
        self._steps += 1
        self._passed += float(mask.sum())
        self._seen += n
        return self.cfg.weight * loss

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.cfg.mode,
            "unlabeled_images": len(self.x_unl),
            "steps": self._steps,
            "pseudo_label_rate": round(self._passed / self._seen, 4) if self._seen else 0.0,
            "threshold": self.cfg.threshold,
        }


def check_unlabeled(cfg: SemiConfig, unlabeled: UnlabeledPool | None) -> None:
    """Raise ``ConfigError`` (naming the fix) when ``cfg`` needs unlabeled images and there
    are none: no pool given, or a pool with no item (nothing unlabeled in the bucket yet,
    or every item labeled, queued or in the validation split)."""
    if not cfg.enabled:
        return
    if unlabeled is None:
        raise ConfigError(
            f"model.semi_supervised = {cfg.mode!r} trains on the unlabeled pool, but this "
            "learner was given none; set model.semi_supervised = 'none', or pass the pool "
            "(unlabeled=...) to Learner.fit"
        )
    if len(unlabeled) == 0:
        raise ConfigError(
            f"model.semi_supervised = {cfg.mode!r} trains on unlabeled images, and the pool "
            "has none (every item is labeled, queued or in the validation split, or the "
            "bucket holds no image yet); add images to the bucket, or set "
            "model.semi_supervised = 'none'"
        )


def draw_unlabeled(
    cfg: SemiConfig,
    unlabeled: UnlabeledPool,
    labeled: Sequence[ImageSource],
    spec: ModelSpec,
    *,
    seed: int,
    decode: Decoder | None = None,
) -> torch.Tensor:
    """Decode ``cfg.max_unlabeled`` pool images drawn with ``seed``: ``uint8 [M, C, H, W]``,
    channels as ``training.decode_labeled`` chooses them for ``labeled``. Nothing is
    written to disk; undecodable images are left out (counted in the log)."""
    rng = np.random.default_rng([seed, 0x5E11])
    raw = unlabeled.sample(cfg.max_unlabeled, rng)
    ch = spec.channels or infer_channels(labeled[:64])
    x, _ok, bad = decode_many(raw, ch, spec.image_size, decode)
    if bad:
        log.info("unlabeled pool: %d of %d sampled images could not be decoded", len(bad), len(raw))
    return x


__all__ = [
    "SEMI_MODES",
    "FixMatch",
    "SemiConfig",
    "SemiMode",
    "check_unlabeled",
    "draw_unlabeled",
    "fixmatch_loss",
    "strong_augment",
]
