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
- on larger sets, the number of steps chosen by early stopping on a stratified held-out
  part of the labeled set (once that part is big enough: ``min_holdout``), then a fresh
  model trained on *every* label with that many steps (see ``fit_tensors``).

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
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from connector.contracts.errors import BadItem
from connector.learning.coupled import Coupling, StepHook
from connector.learning.device import training_device
from connector.learning.evaluation import evaluate, evaluate_predictions
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
from connector.learning.schedule import (
    TrainConfig,
    batch_indices,
    class_weights,
    plan_schedule,
    refit_steps,
    stratified_holdout,
)
from connector.learning.selfsup import Encoder
from connector.learning.trained import TrainedModel, normalisation

log = logging.getLogger(__name__)

#: Backbone learning rate over the head's when a self-supervised encoder initialises it:
#: fine-tuning at the full rate was as good as 0.1 on the digits (docs/model.md).
ENCODER_LR_SCALE = 1.0

#: ``progress(task, done, total)``: called as work advances (training steps, images).
ProgressFn = Callable[[str, int, int], None]

#: ``extra(model, batch_size, mean, std, generator) -> loss``: a term added to every
#: step's supervised loss, drawing its randomness from the step's generator (the
#: semi-supervised term of ``connector.learning.semi``).
ExtraLoss = Callable[[Classifier, int, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _eval_logits(
    model: Classifier, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Logits (on the CPU) of decoded images, in batches on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    with torch.inference_mode():
        out = torch.cat(
            [
                model(to_float(x[i : i + 512], mean, std).to(dev)).cpu()
                for i in range(0, len(x), 512)
            ]
        )
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
    steps: int | None = None,
    hook: StepHook | None = None,
    extra_loss: ExtraLoss | None = None,
    encoder: Encoder | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """One model on ``x``, early-stopped on ``x_val`` when it is not empty; ``steps``
    replaces the planned step count; ``hook`` (a training-coupled method) runs each
    batch's forward pass and adds its loss; ``encoder`` initialises the backbone."""
    t0 = time.perf_counter()
    # Coupled networks keep CPU tensors: with them the run stays on the CPU.
    dev = training_device(cfg.device, coupled=hook is not None)
    with torch.random.fork_rng(devices=[0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # seeds CUDA too (dropout on the GPU), inside the fork
        model = build_model(spec, num_classes, data_channels)
        if encoder is not None:
            model.backbone.load_state_dict(encoder.backbone_for(spec))
        model.to(dev)
        gen = torch.Generator().manual_seed(seed)  # batches and augmentation: on the CPU
        bs, planned = plan_schedule(len(x), cfg)
        steps = steps or planned
        head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        body_lr = cfg.lr * (cfg.backbone_lr_scale if spec.pretrained else 1.0)
        if encoder is not None:
            body_lr = cfg.lr * ENCODER_LR_SCALE
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
        weights = (
            class_weights(y, num_classes).to(dev) if cfg.class_weighting == "balanced" else None
        )
        eval_every = max(1, steps // 15)
        best: tuple[float, float] = (-1.0, math.inf)
        best_state: dict[str, torch.Tensor] | None = None
        best_step, stale, done = 0, 0, 0
        for step, idx in enumerate(batch_indices(len(x), bs, steps, gen), start=1):
            model.train()
            if spec.freeze_backbone:
                model.backbone.eval()  # keep pretrained batch-norm statistics
            xb = to_float(x[idx], mean, std)
            if cfg.augment:
                xb = random_affine(xb, gen, hflip=cfg.hflip)
            xb, yb = xb.to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
            logits, extra = hook.forward(model, xb, yb, step, steps) if hook else (model(xb), 0)
            loss = extra + F.cross_entropy(
                logits, yb, weight=weights, label_smoothing=cfg.label_smoothing
            )
            if extra_loss is not None:
                loss = loss + extra_loss(model, len(idx), mean, std, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {step}; lower lr "
                    f"(now {cfg.lr}) or check the images"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if hook is not None:
                hook.after_step(step, steps)
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
    model.cpu().eval()  # checkpoints and scoring take CPU models
    info: dict[str, Any] = {
        "device": dev.type,
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
    coupling: Coupling | None = None,
    extra_loss: ExtraLoss | None = None,
    encoder: Encoder | None = None,
) -> TrainedModel:
    """Train on decoded ``uint8`` images ``[N, C, H, W]`` (of ``spec.image_size``).

    ``encoder`` (self-supervised, ``learning.selfsup``) initialises every member's
    backbone, and its input normalisation is kept.

    ``coupling``: the networks of a training-coupled strategy, trained with (or after) the
    first member's kept fit, not its holdout trial (``learning.coupled``).

    ``val`` (decoded images, labels) is used for early stopping of a model trained on
    every label. Without it, once the holdout is big enough (``TrainConfig``), each
    member is first trained on the rest with early stopping, only to choose the number of
    steps (``refit_steps``); the member kept is a fresh one trained on every label with
    that many steps. Restoring the early-stopped weights instead lost the held-out labels
    and kept a model stopped at high learning rate on a noisy 30-item holdout, and
    accuracy fell by up to 0.12 when a round crossed ``min_holdout`` (issue 15).
    """
    n, c = int(x_N_C_H_W.shape[0]), len(classes)
    if n < 2:
        raise ValueError(f"need at least 2 labeled images to train, got {n}")
    y_N = y_N.to(torch.int64)
    if int(y_N.min()) < 0 or int(y_N.max()) >= c:
        raise ValueError(f"labels must index classes (0..{c - 1}), got {y_N.min()}..{y_N.max()}")
    data_channels = int(x_N_C_H_W.shape[1])
    empty = x_N_C_H_W[:0], y_N[:0]
    x_val, y_val = (val[0], val[1].to(torch.int64)) if val is not None else empty
    tr, ho = np.arange(n), np.empty(0, dtype=np.int64)
    if val is None and cfg.epochs is None and plan_schedule(n, cfg)[1] > cfg.min_steps:
        rng = np.random.default_rng(cfg.seed)
        tr, ho = stratified_holdout(y_N.numpy(), cfg.holdout_fraction, cfg.min_holdout, rng)
    mean, std = normalisation(spec, *channel_stats(x_N_C_H_W))
    if encoder is not None:
        mean, std = normalisation(spec, encoder.mean, encoder.std)
    session = (
        coupling.start(x_N_C_H_W, mean, std, cfg.augment, cfg.hflip, progress) if coupling else None
    )
    members: list[Classifier] = []
    history: list[dict[str, Any]] = []
    for m in range(spec.ensemble_size):
        label = "training" if spec.ensemble_size == 1 else f"training {m + 1}/{spec.ensemble_size}"
        seed, steps, trial = cfg.seed + 7919 * m, None, None
        if len(ho):
            _, trial = _fit_member(
                x_N_C_H_W[tr], y_N[tr], x_N_C_H_W[ho], y_N[ho], c, spec, cfg, seed,
                mean, std, data_channels, progress, f"{label} (choosing steps)",
                extra_loss=extra_loss, encoder=encoder,
            )  # fmt: skip
            steps = refit_steps(trial, len(tr), n, cfg)
        model, info = _fit_member(
            x_N_C_H_W, y_N, x_val, y_val, c, spec, cfg, seed,
            mean, std, data_channels, progress, label, steps,
            session.hook if session and m == 0 else None, extra_loss, encoder,
        )  # fmt: skip
        if trial is not None:
            info["holdout_trial"] = trial
        members.append(model)
        history.append(info)
    log.info(
        "trained %s on %d images (%d held out to choose %s steps) in %.1fs",
        spec.arch, n, len(ho), history[0]["steps_run"],
        sum(h["seconds"] + h.get("holdout_trial", {}).get("seconds", 0) for h in history),
    )  # fmt: skip
    coupled = session.finish(members[0]) if session else None  # VAAL trains here
    return TrainedModel(
        spec=spec,
        classes=tuple(classes),
        members=members,
        mean=mean,
        std=std,
        data_channels=data_channels,
        config=asdict(cfg),
        history={"members": history, "n_train": n, "n_holdout": len(ho)}
        | ({"coupled": session.info()} if session else {})
        | ({"encoder": encoder.info} if encoder else {}),
        coupled=coupled,
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
    coupling: Coupling | None = None,
    extra_loss: ExtraLoss | None = None,
    encoder: Encoder | None = None,
) -> TrainedModel:
    """Train a classifier on encoded images (bytes or paths) and labels indexing ``classes``.

    Images that cannot be decoded are left out with a warning (their indices are in
    ``trained.history["skipped"]``); if none is left, ``BadItem`` is raised.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label each")
    channels = encoder.data_channels if encoder is not None else None
    x, ok, bad = decode_labeled(images, spec, channels, decode=decode)
    for i, reason in bad:
        log.warning("labeled image %d left out of training: %s", i, reason)
    if not ok:
        raise BadItem("labeled set", "no labeled image could be decoded")
    y = torch.as_tensor([labels[i] for i in ok], dtype=torch.int64)
    val = None
    if val_images is not None and val_labels is not None and len(val_images):
        xv, okv, _ = decode_many(val_images, int(x.shape[1]), spec.image_size, decode)
        val = (xv, torch.as_tensor([val_labels[i] for i in okv], dtype=torch.int64))
    trained = fit_tensors(
        x, y, classes, spec, cfg, progress,
        val=val, coupling=coupling, extra_loss=extra_loss, encoder=encoder,
    )  # fmt: skip
    trained.history["skipped"] = [i for i, _ in bad]
    return trained


__all__ = [
    "ExtraLoss",
    "ProgressFn",
    "TrainConfig",
    "TrainedModel",
    "class_weights",
    "decode_labeled",
    "evaluate",
    "evaluate_predictions",
    "fit_tensors",
    "plan_schedule",
    "refit_steps",
    "stratified_holdout",
    "train_classifier",
]
