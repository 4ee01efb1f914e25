"""WAAL: the classifier trained with a Wasserstein critic between the features of labeled
and unlabeled images; the critic then scores the pool.

Reference: C. Shui, F. Zhou, C. Gagne and B. Wang, "Deep Active Learning: Unified and
Principled Method for Query and Training", AISTATS 2020. Each step:

1. one forward pass of the labeled batch and an equal unlabeled batch (same augmentation,
   one batch so that batch-norm statistics cannot tell them apart); the classifier's loss
   on the labeled part plus ``ALPHA * (E_u[D(f)] - E_l[D(f)])``: the features learn to
   make unlabeled images look labeled to the critic ``D``;
2. the critic, on the detached features, maximises ``E_u[D] - E_l[D]`` under a gradient
   penalty (WGAN-GP, Gulrajani et al. 2017, weight 10), the estimate of the Wasserstein
   distance between the two feature distributions.

Where this differs from the authors' code, and why: the labeled and unlabeled means have
equal weight (their ``gamma_ratio`` = |L|/|U| lets the critic raise every output without
bound, as a constant offset is then rewarded), and the gradient penalty is added to the
critic's loss (their code subtracts it). The pool score is ``sigmoid(D(f(x)))``, as theirs.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from connector.learning.coupled.base import CoupledModule, last_mean
from connector.learning.images import random_affine, to_float
from connector.learning.model import Classifier

#: Weight of the adversarial term in the classifier's loss: small, so it shapes the
#: features without competing with classification (not tuned).
ALPHA = 0.01
#: Gradient-penalty weight of WGAN-GP.
GP_WEIGHT = 10.0
#: Hidden units of the critic's two layers, and its Adam learning rate.
HIDDEN = 64
LR = 1e-3


class WAALModule(CoupledModule):
    """The critic: ``emb_B_D -> D(emb) [B]`` (high: looks unlabeled)."""

    name = "waal"

    def __init__(self, feature_dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.feature_dim, self.hidden = feature_dim, hidden
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def config(self) -> dict[str, Any]:
        return {"feature_dim": self.feature_dim, "hidden": self.hidden}

    def critic(self, emb_B_D: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(emb_B_D).squeeze(1)
        return out

    def forward_aux(
        self, member: Classifier, x_B_C_H_W: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = member.features(x_B_C_H_W)
        return emb, torch.sigmoid(self.critic(emb))


def gradient_penalty(
    critic: WAALModule, a_B_D: torch.Tensor, b_B_D: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """``E[(|grad D(mix)| - 1)^2]`` on random mixes of ``a`` and ``b`` (WGAN-GP)."""
    t = torch.rand((a_B_D.shape[0], 1), generator=gen)
    mix = (t * a_B_D + (1.0 - t) * b_B_D).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic.critic(mix).sum(), mix, create_graph=True)
    return ((grad.norm(2, dim=1) - 1.0) ** 2).mean()


class WAALSession:
    """Trains the critic with the classifier (``StepHook``; module docstring).

    ``x_u`` holds decoded ``uint8`` unlabeled images; without any, the classifier trains
    as usual and the critic stays at its initialisation (the pool is then empty anyway).
    """

    def __init__(
        self,
        x_u: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        seed: int,
        *,
        augment: bool = True,
        hflip: bool = False,
    ) -> None:
        self.x_u, self.mean, self.std = x_u, mean, std
        self.augment, self.hflip = augment, hflip
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self._module: WAALModule | None = None
        self.opt: torch.optim.Optimizer | None = None
        self._feats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.distances: list[float] = []
        self.seconds = 0.0
        self.hook = self

    def forward(
        self, model: Classifier, xb: torch.Tensor, yb: torch.Tensor, step: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.x_u) == 0:
            self._feats = None
            return model(xb), xb.new_zeros(())
        t0 = time.perf_counter()
        b = xb.shape[0]
        idx = torch.randint(len(self.x_u), (b,), generator=self.gen)
        xu = to_float(self.x_u[idx], self.mean, self.std)
        if self.augment:
            xu = random_affine(xu, self.gen, hflip=self.hflip)
        emb = model.features(torch.cat([xb, xu]))
        emb_l, emb_u = emb[:b], emb[b:]
        logits = model.head(emb_l)
        critic = self.module_for(int(emb.shape[1]))
        distance = critic.critic(emb_u).mean() - critic.critic(emb_l).mean()
        self._feats = (emb_l.detach(), emb_u.detach())
        self.seconds += time.perf_counter() - t0
        return logits, ALPHA * distance

    def module_for(self, feature_dim: int) -> WAALModule:
        """The critic, built at the first batch (when the embedding size is known) from
        its own seed, so the classifier's random stream is untouched."""
        if self._module is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._module = WAALModule(feature_dim)
            self.opt = torch.optim.Adam(self._module.parameters(), lr=LR, betas=(0.5, 0.9))
        return self._module

    def after_step(self, step: int, steps: int) -> None:
        if self._feats is None or self._module is None or self.opt is None:
            return
        t0 = time.perf_counter()
        emb_l, emb_u = self._feats
        critic = self._module
        self.opt.zero_grad(set_to_none=True)
        distance = critic.critic(emb_u).mean() - critic.critic(emb_l).mean()
        loss = -distance + GP_WEIGHT * gradient_penalty(critic, emb_l, emb_u, self.gen)
        loss.backward()
        self.opt.step()
        self.distances.append(float(distance.detach()))
        self._feats = None
        self.seconds += time.perf_counter() - t0

    def finish(self, model: Classifier) -> CoupledModule:
        return self.module_for(model.feature_dim).eval()

    def info(self) -> dict[str, Any]:
        return {
            "trains": "waal",
            "unlabeled": len(self.x_u),
            "critic_distance_end": last_mean(self.distances),
            "steps": len(self.distances),
            "seconds": round(self.seconds, 3),
        }
