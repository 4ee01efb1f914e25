"""VAAL: a VAE and a discriminator trained adversarially on labeled and unlabeled images;
the discriminator's belief that an image is unlabeled scores the pool.

Reference: S. Sinha, S. Ebrahimi and T. Darrell, "Variational Adversarial Active
Learning", ICCV 2019. VAAL is task-agnostic: it never reads labels nor the classifier, so
it trains after the classifier (``Session.finish``) on the same decoded tensors, the
images normalised as the classifier's. Each step (the paper's Algorithm 1, with its
``lambda = 1`` weights): the VAE minimises the reconstruction and KL terms of both batches
plus the adversarial term that makes the discriminator call the unlabeled latent codes
labeled; the discriminator, on the detached codes, learns labeled (1) from unlabeled (0).
The pool score is ``1 - D(mu(x))``, the probability of "unlabeled".

Smaller than the paper's (a 2-layer conv VAE with a 32-dimensional latent, a 64-unit
discriminator, images at 8, 16 or 32 pixels, ``STEPS`` steps), to fit a CPU round.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from connector.contracts.learner import Progress
from connector.learning.coupled.base import CoupledModule, last_mean
from connector.learning.images import to_float
from connector.learning.model import Classifier

#: Optimiser steps per round, batch of labeled and of unlabeled images, Adam's rate.
STEPS = 300
BATCH = 32
LR = 5e-4
LATENT = 32
#: Weight of the KL term and of the adversarial term in the VAE's loss (the paper's 1).
BETA = 1.0
ADVERSARY = 1.0


def vae_size(image_size: int) -> int:
    """The side the VAE works at: the largest of 32, 16, 8 that is at most the image's."""
    return next(s for s in (32, 16, 8) if s <= image_size)


class VAALModule(CoupledModule):
    """VAE encoder/decoder and the latent discriminator."""

    name = "vaal"

    def __init__(self, in_channels: int, size: int, latent: int = LATENT) -> None:
        super().__init__()
        self.in_channels, self.size, self.latent = in_channels, size, latent
        cells = 64 * (size // 4) ** 2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(cells, 2 * latent),
        )
        self.decoder_in = nn.Linear(latent, cells)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, in_channels, 4, 2, 1),
        )
        self.discriminator = nn.Sequential(
            nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "size": self.size, "latent": self.latent}

    def shrink(self, x_B_C_H_W: torch.Tensor) -> torch.Tensor:
        """A normalised batch at the VAE's side (area-averaged when smaller)."""
        if x_B_C_H_W.shape[-1] == self.size and x_B_C_H_W.shape[-2] == self.size:
            return x_B_C_H_W
        return F.adaptive_avg_pool2d(x_B_C_H_W, self.size)

    def encode(self, x_B_C_S_S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``[B, latent]``."""
        mu, logvar = self.encoder(x_B_C_S_S).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z_B_L: torch.Tensor) -> torch.Tensor:
        s = self.size // 4
        out: torch.Tensor = self.decoder(self.decoder_in(z_B_L).view(-1, 64, s, s))
        return out

    def logit_labeled(self, z_B_L: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.discriminator(z_B_L).squeeze(1)
        return out

    def forward_aux(
        self, member: Classifier, x_B_C_H_W: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = member.features(x_B_C_H_W)
        mu, _ = self.encode(self.shrink(x_B_C_H_W))
        return emb, 1.0 - torch.sigmoid(self.logit_labeled(mu))


def _vae_loss(
    module: VAALModule, x: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction + BETA * KL, the latent sample z) of a normalised batch."""
    mu, logvar = module.encode(x)
    z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
    recon = F.mse_loss(module.decode(z), x)
    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
    return recon + BETA * kl, z


class VAALSession:
    """Trains the VAE and discriminator once the classifier is trained (no step hook)."""

    def __init__(
        self,
        x_l: torch.Tensor,
        x_u: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        image_size: int,
        seed: int,
        *,
        steps: int = STEPS,
        progress: Progress | None = None,
    ) -> None:
        self.x_l, self.x_u, self.mean, self.std = x_l, x_u, mean, std
        self.size, self.seed, self.steps, self.progress = (
            vae_size(image_size),
            seed,
            steps,
            progress,
        )
        self.hook = None
        self.vae_losses: list[float] = []
        self.disc_losses: list[float] = []
        self.seconds = 0.0

    def _batch(self, x: torch.Tensor, gen: torch.Generator, module: VAALModule) -> torch.Tensor:
        idx = torch.randint(len(x), (min(BATCH, len(x)),), generator=gen)
        return module.shrink(to_float(x[idx], self.mean, self.std))

    def finish(self, model: Classifier) -> CoupledModule:
        t0 = time.perf_counter()
        channels = int(to_float(self.x_l[:1], self.mean, self.std).shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = VAALModule(channels, self.size)
        gen = torch.Generator().manual_seed(self.seed)
        if len(self.x_u) == 0 or len(self.x_l) < 2:
            return module.eval()  # nothing to tell apart: an untrained, finite scorer
        opt_vae = torch.optim.Adam(
            [p for n, p in module.named_parameters() if not n.startswith("discriminator.")], lr=LR
        )
        opt_disc = torch.optim.Adam(module.discriminator.parameters(), lr=LR)
        module.train()
        for step in range(1, self.steps + 1):
            xl, xu = self._batch(self.x_l, gen, module), self._batch(self.x_u, gen, module)
            loss_l, z_l = _vae_loss(module, xl, gen)
            loss_u, z_u = _vae_loss(module, xu, gen)
            # The VAE wants every code called labeled; the paper's adversarial term.
            fool = F.binary_cross_entropy_with_logits(
                module.logit_labeled(torch.cat([z_l, z_u])), torch.ones(len(z_l) + len(z_u))
            )
            vae_loss = loss_l + loss_u + ADVERSARY * fool
            opt_vae.zero_grad(set_to_none=True)
            vae_loss.backward()
            opt_vae.step()
            logits = module.logit_labeled(torch.cat([z_l, z_u]).detach())
            target = torch.cat([torch.ones(len(z_l)), torch.zeros(len(z_u))])
            disc_loss = F.binary_cross_entropy_with_logits(logits, target)
            opt_disc.zero_grad(set_to_none=True)
            disc_loss.backward()
            opt_disc.step()
            if not (torch.isfinite(vae_loss) and torch.isfinite(disc_loss)):
                raise FloatingPointError(f"VAAL training diverged at step {step}")
            self.vae_losses.append(float(vae_loss.detach()))
            self.disc_losses.append(float(disc_loss.detach()))
            if self.progress is not None and (step % 50 == 0 or step == self.steps):
                self.progress("training vaal", step, self.steps)
        self.seconds = time.perf_counter() - t0
        return module.eval()

    def info(self) -> dict[str, Any]:
        return {
            "trains": "vaal",
            "unlabeled": len(self.x_u),
            "vae_loss_end": last_mean(self.vae_losses),
            "discriminator_loss_end": last_mean(self.disc_losses),
            "steps": len(self.vae_losses),
            "seconds": round(self.seconds, 3),
        }
