"""Self-supervised pre-training of the backbone on the unlabeled pool: SimCLR.

SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML): two random views of each image go through the backbone and a
small projection MLP; the NT-Xent loss pulls the two views of an image together and
pushes them from the other ``2B - 2`` views of the batch. The projection head is thrown
away; the backbone (the *encoder*) initialises every model trained after it (``fit``) and
gives the cold start its embeddings (``init_model``), so TypiClust and k-means choose the
first batch on features that already separate the pool's clusters.

Two pretext tasks, by the views they contrast:

- ``simclr``: the paper's recipe, random resized crop and *colour* distortion (saturation,
  a per-channel gain standing in for hue jitter, random grayscale) plus brightness and
  contrast. It needs colour images: on 1-channel images the colour half of the views is a
  no-op and the recipe is not the one measured, so ``check_pretext`` refuses it.
- ``simclr_gray``: crops, brightness and contrast only, for grayscale images (digits,
  scans, X-rays).

CPU-sized defaults (``PretrainConfig``): a few hundred steps of 256 images on a sample of
the pool, decoded in memory and dropped with the run (the labeled cache never sees them);
a GPU is used when torch sees one. The encoder is one weights-only file (``save_encoder``,
atomic; ``load_encoder`` runs no pickled code).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from connector.contracts.errors import CheckpointError, ConfigError
from connector.files import atomic_write
from connector.learning.device import training_device
from connector.learning.images import channel_stats
from connector.learning.model import ModelSpec, build_model
from connector.learning.pretext import PRETEXTS, Pretext, check_pretext
from connector.learning.trained import normalisation

log = logging.getLogger(__name__)

ENCODER_FORMAT = "al-connector-encoder"
ENCODER_VERSION = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pre-training of the backbone (``pretext="none"``: none).

    Attributes:
        pretext: ``"simclr"`` (colour images), ``"simclr_gray"`` (any images) or ``"none"``.
        every_rounds: pre-train again (continuing from the last encoder) once this many
            rounds have passed since the last pre-training, so the encoder follows a pool
            that grows; 0 pre-trains once.
        steps: optimiser steps of one pre-training.
        batch_size: images per step (each gives two views).
        max_unlabeled: pool images drawn for one pre-training (decoded in memory).
        temperature: NT-Xent temperature.
        lr: peak learning rate (AdamW, warm-up then cosine).
        projection_dim: output size of the projection MLP (thrown away after training).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``learning.device``).
    """

    pretext: Pretext = "none"
    every_rounds: int = 5
    steps: int = 300
    batch_size: int = 256
    max_unlabeled: int = 4000
    temperature: float = 0.2
    lr: float = 2e-3
    projection_dim: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.pretext not in PRETEXTS:
            raise ConfigError(
                f"model.pretrain must be one of {', '.join(PRETEXTS)}, got {self.pretext!r}"
            )
        for name in ("steps", "batch_size", "max_unlabeled", "projection_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        if self.every_rounds < 0:
            raise ConfigError(f"model.pretrain_every_rounds must be >= 0, got {self.every_rounds}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("pretrain temperature and lr must be > 0")

    @property
    def enabled(self) -> bool:
        return self.pretext != "none"

    @property
    def colour(self) -> bool:
        return self.pretext == "simclr"


def simclr_views(
    x01_B_C_H_W: torch.Tensor, generator: torch.Generator, *, colour: bool, hflip: bool
) -> torch.Tensor:
    """One random view of each image of a ``[0, 1]`` float batch, also in ``[0, 1]``.

    A random resized crop keeping 30-100 % of the area with aspect ratio 3/4-4/3 (the
    paper's 8 % lower bound loses a small object entirely), an optional mirror, then with
    probability 0.8 brightness and contrast jitter (x0.6-1.4); for ``colour`` on 3
    channels, with probability 0.8 saturation jitter (x0-2) and a per-channel gain
    (x0.8-1.2), then grayscale with probability 0.2. Every draw comes from ``generator``
    (on the batch's device).
    """
    b, c, _, _ = x01_B_C_H_W.shape
    dev = x01_B_C_H_W.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev)

    area = 0.3 + 0.7 * rand(b)
    ratio = torch.exp((rand(b) * 2 - 1) * math.log(4 / 3))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (rand(b) * 2 - 1) * (1 - sx)
    ty = (rand(b) * 2 - 1) * (1 - sy)
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0) if hflip else torch.ones(b, device=dev)
    zero = torch.zeros(b, device=dev)
    theta = torch.stack(
        [torch.stack([sx * flip, zero, tx], dim=1), torch.stack([zero, sy, ty], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x01_B_C_H_W.shape), align_corners=False)
    x = F.grid_sample(x01_B_C_H_W, grid, padding_mode="border", align_corners=False)
    jitter = (rand(b) < 0.8).view(b, 1, 1, 1)
    bright = (0.6 + 0.8 * rand(b)).view(b, 1, 1, 1)
    contrast = (0.6 + 0.8 * rand(b)).view(b, 1, 1, 1)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(jitter, ((x - centre) * contrast + centre) * bright, x)
    if colour and c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)

        def luma(v: torch.Tensor) -> torch.Tensor:  # ITU-R 601 grey, [B, 1, H, W]
            return (v * weights).sum(dim=1, keepdim=True)

        cjit = (rand(b) < 0.8).view(b, 1, 1, 1)
        sat = (2.0 * rand(b)).view(b, 1, 1, 1)
        gain = (0.8 + 0.4 * rand(b, 3)).view(b, 3, 1, 1)
        gray = luma(x)
        x = torch.where(cjit, (gray + (x - gray) * sat) * gain, x)
        to_gray = (rand(b) < 0.2).view(b, 1, 1, 1)
        x = torch.where(to_gray, luma(x).expand(-1, 3, -1, -1), x)
    return x.clamp(0.0, 1.0)


def nt_xent(z1_B_D: torch.Tensor, z2_B_D: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss: view ``i`` of ``z1`` must pick view ``i`` of ``z2`` (and back)
    among the other ``2B - 1`` views, by cosine similarity over ``temperature``."""
    b = z1_B_D.shape[0]
    z = F.normalize(torch.cat([z1_B_D, z2_B_D]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


@dataclass
class Encoder:
    """A pre-trained backbone and what it was trained on.

    ``state`` is the backbone's ``state_dict`` (``Classifier.backbone``); ``mean``/``std``
    the normalisation of its inputs (``trained.normalisation`` of the pool sample's
    statistics: what training uses); ``data_channels`` the
    images' channels; ``info`` how it was trained (round, pretext, steps, images, loss).
    """

    spec: ModelSpec
    data_channels: int
    mean: torch.Tensor
    std: torch.Tensor
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    def fits(self, spec: ModelSpec) -> bool:
        """Whether this encoder's backbone is the one ``spec`` builds."""
        return all(
            getattr(self.spec, k) == getattr(spec, k)
            for k in ("arch", "weights", "image_size", "channels", "width")
        )

    def backbone_for(self, spec: ModelSpec) -> dict[str, torch.Tensor]:
        if not self.fits(spec):
            raise ConfigError(
                "the pre-trained encoder was built for another model (arch, weights, "
                "image_size, channels or width changed); it is pre-trained again at the "
                "next round's TRAIN"
            )
        return self.state


def pretrain_encoder(
    x_N_C_H_W: torch.Tensor,
    spec: ModelSpec,
    cfg: PretrainConfig,
    *,
    seed: int,
    hflip: bool = False,
    init: Encoder | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Encoder:
    """Pre-train ``spec``'s backbone on decoded ``uint8`` images ``[N, C, H, W]``.

    ``init`` (an encoder that ``fits`` the spec) is continued rather than starting from
    random weights (a refresh). Seeded: the same images, seed and config give the same
    encoder on CPU. Raises ``ConfigError`` when the pretext does not fit the images.
    """
    n, c = int(x_N_C_H_W.shape[0]), int(x_N_C_H_W.shape[1])
    check_pretext(cfg.pretext, c)
    if n < 2:
        raise ConfigError(
            f"self-supervised pre-training needs at least 2 readable pool images, got {n}; "
            "add images to the bucket, or set model.pretrain = 'none'"
        )
    dev = training_device(cfg.device)
    t0 = time.perf_counter()
    # The inputs are normalised as training will normalise them (ImageNet statistics
    # for pretrained torchvision weights, the pool's own otherwise).
    mean, std = normalisation(spec, *channel_stats(x_N_C_H_W))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, 2, c)
        backbone, dim = model.backbone, model.feature_dim
        if init is not None:
            backbone.load_state_dict(init.backbone_for(spec))
        proj = nn.Sequential(
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, cfg.projection_dim)
        )
    backbone.to(dev).train()
    proj.to(dev).train()
    params = list(backbone.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    gen = torch.Generator(device=dev).manual_seed(seed)
    pick = torch.Generator().manual_seed(seed + 1)
    x_all = x_N_C_H_W.to(dev)
    m, s = mean.to(dev).view(1, -1, 1, 1), std.to(dev).view(1, -1, 1, 1)
    bs = min(cfg.batch_size, n)
    losses: list[float] = []
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(n, generator=pick)[:bs].to(dev)
        x01 = x_all[idx].to(torch.float32).div_(255.0)
        # A 1-channel view broadcasts over a 3-channel normalisation (torchvision archs).
        v1 = (simclr_views(x01, gen, colour=cfg.colour, hflip=hflip) - m) / s
        v2 = (simclr_views(x01, gen, colour=cfg.colour, hflip=hflip) - m) / s
        loss = nt_xent(proj(backbone(v1)), proj(backbone(v2)), cfg.temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pre-training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step % 10 == 0 or step == cfg.steps):
            progress("pre-training", step, cfg.steps)
    backbone.eval().cpu()
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "pretext": cfg.pretext,
        "steps": cfg.steps,
        "images": n,
        "batch_size": bs,
        "loss_first": round(losses[0], 4),
        "loss_last": round(sum(tail) / len(tail), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "device": dev.type,
        "continued": init is not None,
    }
    log.info(
        "pre-trained %s backbone (%s) on %d pool images: %d steps, NT-Xent %.3f -> %.3f, %.1fs",
        spec.arch, cfg.pretext, n, cfg.steps, info["loss_first"], info["loss_last"],
        info["seconds"],
    )  # fmt: skip
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    return Encoder(spec, c, mean, std, state, info)


def save_encoder(encoder: Encoder, path: Path) -> None:
    """Write ``encoder`` to ``path`` atomically: ``{"meta": JSON, "tensors": {...}}``."""
    meta = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "spec": asdict(encoder.spec),
        "data_channels": encoder.data_channels,
        "info": encoder.info,
    }
    tensors = {f"backbone.{k}": v for k, v in encoder.state.items()}
    tensors |= {"norm.mean": encoder.mean, "norm.std": encoder.std}
    payload = {"meta": json.dumps(meta, sort_keys=True), "tensors": tensors}
    atomic_write(path, lambda p: torch.save(payload, p))


def load_encoder(path: Path) -> Encoder:
    """The encoder saved at ``path`` (no pickled code runs); ``CheckpointError`` if the
    file is not a whole encoder."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        tensors: dict[str, torch.Tensor] = payload["tensors"]
        if meta.get("format") != ENCODER_FORMAT or meta.get("version") != ENCODER_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable al-connector encoder ({type(exc).__name__}: {exc}); "
            "it is pre-trained again at the next training (or delete it)"
        ) from None
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return Encoder(
        ModelSpec(**meta["spec"]),
        int(meta["data_channels"]),
        tensors["norm.mean"],
        tensors["norm.std"],
        state,
        meta["info"],
    )


__all__ = [
    "ENCODER_FORMAT",
    "PRETEXTS",
    "Encoder",
    "Pretext",
    "PretrainConfig",
    "check_pretext",
    "load_encoder",
    "nt_xent",
    "pretrain_encoder",
    "save_encoder",
    "simclr_views",
]
