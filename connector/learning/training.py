"""Training the learner: seeded, deterministic on CPU, good with few labels.

``train_classifier`` takes encoded images (bytes or paths) with integer labels and
returns a ``TrainedModel`` that predicts ``probs_N_K_C`` for ``strategies`` (K = MC-dropout
samples x ensemble members) and embeddings ``emb_N_D``.

What makes it learn well from few labels (each measured by ``al-connector simulate``):
- augmentation on every batch (small rotations, shifts and zooms; mirroring optional);
- AdamW with weight decay and a one-cycle (warm-up + cosine) schedule (no label smoothing
  by default: it flattens the low probabilities that uncertainty strategies read);
- a number of optimiser steps that does not shrink with the labeled set (a 20-label set
  still gets ``min_steps`` steps), batch size growing with the set;
- class-balanced loss weights, so a rare class is not drowned by a frequent one;
- early stopping on a stratified held-out part of the labeled set once that part is big
  enough to mean something (``min_holdout``), restoring the best weights.

Randomness never touches the caller's global state: model initialisation and dropout run
under ``torch.random.fork_rng`` seeded from ``TrainConfig.seed``, batches and
augmentation come from a private ``torch.Generator``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from connector.contracts.errors import BadItem, ConfigError
from connector.learning.images import (
    Decoder,
    ImageSource,
    channel_stats,
    decode_many,
    infer_channels,
    random_affine,
    to_float,
)
from connector.learning.model import Classifier, ModelSpec, build_model
from connector.learning.trained import TrainedModel, normalisation

log = logging.getLogger(__name__)

#: ``progress(task, done, total)``: called as work advances (training steps, images).
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``None`` sizes adapt to the labeled set (see ``plan_schedule``).

    Attributes:
        epochs: passes over the training part; ``None`` = at least ``min_steps``
            optimiser steps and about 20 epochs on large sets, capped at ``max_steps``.
        batch_size: ``None`` = 16 below 64 labels, 32 below 256, 64 below 2,048, else 128.
        lr: peak learning rate of the one-cycle schedule (the head's, with pretrained
            weights the backbone gets ``lr * backbone_lr_scale``).
        holdout_fraction: part of the labeled set held out for early stopping, used only
            when it holds at least ``min_holdout`` items (and never when a validation
            set is given to ``train_classifier``).
        patience: evaluations on the holdout without improvement before stopping (the
            holdout is evaluated about 15 times per run).
        class_weighting: ``"balanced"`` weights the loss by inverse class frequency.
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

    def __post_init__(self) -> None:
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


def _batches(n: int, bs: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Index batches of consecutive random permutations (every item once per epoch)."""
    need = bs * steps
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))]
    flat = torch.cat(perms)[:need]
    return list(flat.view(steps, bs))


def _eval_logits(
    model: Classifier, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        out = torch.cat([model(to_float(x[i : i + 512], mean, std)) for i in range(0, len(x), 512)])
    return out


def _fit_member(
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    spec: ModelSpec,
    cfg: TrainConfig,
    seed: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    data_channels: int,
    progress: ProgressFn | None,
    label: str,
) -> tuple[Classifier, dict[str, Any]]:
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, num_classes, data_channels)
        gen = torch.Generator().manual_seed(seed)
        bs, steps = plan_schedule(len(x), cfg)
        head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        body_lr = cfg.lr * (cfg.backbone_lr_scale if spec.pretrained else 1.0)
        groups: list[dict[str, Any]] = [{"params": head, "lr": cfg.lr}]
        max_lr = [cfg.lr]
        if body:
            groups.append({"params": body, "lr": body_lr})
            max_lr.append(body_lr)
        # fused: one kernel for all parameters, a third of a small model's step time on CPU.
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=steps, pct_start=0.15
        )
        weights = class_weights(y, num_classes) if cfg.class_weighting == "balanced" else None
        eval_every = max(1, steps // 15)
        best: tuple[float, float] = (-1.0, math.inf)
        best_state: dict[str, torch.Tensor] | None = None
        best_step, stale, done = 0, 0, 0
        for step, idx in enumerate(_batches(len(x), bs, steps, gen), start=1):
            model.train()
            if spec.freeze_backbone:
                model.backbone.eval()  # keep pretrained batch-norm statistics
            xb = to_float(x[idx], mean, std)
            if cfg.augment:
                xb = random_affine(xb, gen, hflip=cfg.hflip)
            loss = F.cross_entropy(
                model(xb), y[idx], weight=weights, label_smoothing=cfg.label_smoothing
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {step}; lower lr "
                    f"(now {cfg.lr}) or check the images"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done = step
            if progress is not None and (step % 10 == 0 or step == steps):
                progress(label, step, steps)
            if len(x_val) and (step % eval_every == 0 or step == steps):
                logits = _eval_logits(model, x_val, mean, std)
                acc = float((logits.argmax(1) == y_val).float().mean())
                nll = float(F.cross_entropy(logits, y_val))
                if acc > best[0] or (acc == best[0] and nll < best[1]):
                    best, best_step, stale = (acc, nll), step, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    info: dict[str, Any] = {
        "seed": seed,
        "batch_size": bs,
        "steps_planned": steps,
        "steps_run": done,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if len(x_val):
        info.update(holdout_accuracy=best[0], holdout_nll=best[1], best_step=best_step)
    return model, info


def fit_tensors(
    x_N_C_H_W: torch.Tensor,
    y_N: torch.Tensor,
    classes: Sequence[str],
    spec: ModelSpec,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainedModel:
    """Train on decoded ``uint8`` images ``[N, C, H, W]`` (of ``spec.image_size``).

    ``val`` (decoded images, labels) replaces the holdout for early stopping.
    """
    n, c = int(x_N_C_H_W.shape[0]), len(classes)
    if n < 2:
        raise ValueError(f"need at least 2 labeled images to train, got {n}")
    y_N = y_N.to(torch.int64)
    if int(y_N.min()) < 0 or int(y_N.max()) >= c:
        raise ValueError(f"labels must index classes (0..{c - 1}), got {y_N.min()}..{y_N.max()}")
    data_channels = int(x_N_C_H_W.shape[1])
    if val is not None:
        tr, x_val, y_val = np.arange(n), val[0], val[1].to(torch.int64)
    else:
        rng = np.random.default_rng(cfg.seed)
        tr, ho = stratified_holdout(y_N.numpy(), cfg.holdout_fraction, cfg.min_holdout, rng)
        x_val, y_val = x_N_C_H_W[ho], y_N[ho]
    x_tr, y_tr = x_N_C_H_W[tr], y_N[tr]
    data_mean, data_std = channel_stats(x_tr)
    mean, std = normalisation(spec, data_mean, data_std)
    members: list[Classifier] = []
    history: list[dict[str, Any]] = []
    for m in range(spec.ensemble_size):
        label = "training" if spec.ensemble_size == 1 else f"training {m + 1}/{spec.ensemble_size}"
        model, info = _fit_member(
            x_tr, y_tr, x_val, y_val, c, spec, cfg, cfg.seed + 7919 * m,
            mean, std, data_channels, progress, label,
        )  # fmt: skip
        members.append(model)
        history.append(info)
    log.info(
        "trained %s on %d images (%d held out) in %.1fs",
        spec.arch, len(tr), len(x_val), sum(h["seconds"] for h in history),
    )  # fmt: skip
    return TrainedModel(
        spec=spec,
        classes=tuple(classes),
        members=members,
        mean=mean,
        std=std,
        data_channels=data_channels,
        config=asdict(cfg),
        history={"members": history, "n_train": len(tr), "n_holdout": len(x_val)},
    )


def decode_labeled(
    images: Sequence[ImageSource],
    spec: ModelSpec,
    channels: int | None = None,
    decode: Decoder | None = None,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode labeled images for ``spec``; channels from the spec, else from the images."""
    ch = channels or spec.channels or infer_channels(images[:64])
    return decode_many(images, ch, spec.image_size, decode)


def train_classifier(
    images: Sequence[ImageSource],
    labels: Sequence[int],
    classes: Sequence[str],
    spec: ModelSpec,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    *,
    val_images: Sequence[ImageSource] | None = None,
    val_labels: Sequence[int] | None = None,
    decode: Decoder | None = None,
) -> TrainedModel:
    """Train a classifier on encoded images (bytes or paths) and labels indexing ``classes``.

    Images that cannot be decoded are left out with a warning (their indices are in
    ``trained.history["skipped"]``); if none is left, ``BadItem`` is raised.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label each")
    x, ok, bad = decode_labeled(images, spec, decode=decode)
    for i, reason in bad:
        log.warning("labeled image %d left out of training: %s", i, reason)
    if not ok:
        raise BadItem("labeled set", "no labeled image could be decoded")
    y = torch.as_tensor([labels[i] for i in ok], dtype=torch.int64)
    val = None
    if val_images is not None and val_labels is not None and len(val_images):
        xv, okv, _ = decode_many(val_images, int(x.shape[1]), spec.image_size, decode)
        val = (xv, torch.as_tensor([val_labels[i] for i in okv], dtype=torch.int64))
    trained = fit_tensors(x, y, classes, spec, cfg, progress, val=val)
    trained.history["skipped"] = [i for i, _ in bad]
    return trained


def evaluate_predictions(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro F1 (over classes present in truth or predictions), per-class
    accuracy (``None`` for a class absent from the truth), confusion matrix ``[true][pred]``.
    """
    c = len(classes)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    n = int(conf.sum())
    tp = np.diag(conf).astype(np.float64)
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)
    per_class = {
        cls: (float(tp[i] / support[i]) if support[i] else None) for i, cls in enumerate(classes)
    }
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": per_class,
        "confusion": conf.tolist(),
        "classes": list(classes),
    }


def evaluate(
    trained: TrainedModel,
    images: Sequence[ImageSource],
    labels: Sequence[int],
    decode: Decoder | None = None,
) -> dict[str, Any]:
    """Metrics of ``trained`` on labeled images (undecodable ones are left out and counted)."""
    x, ok, bad = decode_many(images, trained.data_channels, trained.spec.image_size, decode)
    probs = trained.predict_tensor(x).mean(axis=1)
    y_true = np.asarray([labels[i] for i in ok], dtype=np.int64)
    out = evaluate_predictions(y_true, probs.argmax(1), trained.classes)
    out["skipped"] = len(bad)
    return out


__all__ = [
    "ProgressFn",
    "TrainConfig",
    "TrainedModel",
    "class_weights",
    "decode_labeled",
    "evaluate",
    "evaluate_predictions",
    "fit_tensors",
    "plan_schedule",
    "stratified_holdout",
    "train_classifier",
]
