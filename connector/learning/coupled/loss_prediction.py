"""Loss prediction: a small head on the backbone's intermediate features that learns to
rank images by the classifier's loss, trained jointly with the classifier.

Reference: D. Yoo and I. S. Kweon, "Learning Loss for Active Learning", CVPR 2019. As in
the paper: each tapped block's feature map is global-average-pooled and goes through its
own ``Linear -> ReLU`` (128 units); the concatenation goes through ``Linear`` to one
value; the head is trained with the pairwise ranking loss (margin 1, weight 1) against the
detached per-image cross-entropy of the target model; after 60% of the steps (epoch 120
of 200 in the paper) the features are detached, so the head stops shaping the backbone
while the classifier converges.

Taps: the small CNN's stem and three conv stages, torchvision ResNets' four layers; for
other architectures the embedding alone (the paper's head needs block outputs, which
MobileNet and EfficientNet do not expose under stable names).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from connector.learning.backbones import SmallCNN
from connector.learning.coupled.base import CoupledModule, last_mean
from connector.learning.model import Classifier

#: Units of each tap's ``Linear -> ReLU`` (the paper's 128).
HIDDEN = 128
#: Margin of the ranking loss and its weight against the classifier's loss (the paper's).
MARGIN = 1.0
WEIGHT = 1.0
#: Part of the steps after which the head's input is detached (the paper: 120 of 200).
DETACH_AT = 0.6
#: The head's own Adam learning rate (it starts from scratch each round).
LR = 1e-3


def feature_taps(backbone: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs the head reads (module docstring); empty = embedding."""
    if isinstance(backbone, SmallCNN):
        stages = backbone.stages
        return [backbone.stem, stages[0], stages[2], stages[4]]
    layers = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for m in layers):
        return [m for m in layers if m is not None]
    return []


class _Taps:
    """Collects the outputs of ``modules`` during one forward pass (forward hooks)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.out: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _Taps:
        self._handles = [m.register_forward_hook(self._keep) for m in self.modules]
        return self

    def _keep(self, _module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        self.out.append(out)

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for h in self._handles:
            h.remove()


def features_and_taps(
    member: Classifier, x_B_C_H_W: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(emb_B_D, [tap outputs])``; the taps are ``[emb_B_D]`` without tapped blocks."""
    with _Taps(feature_taps(member.backbone)) as taps:
        emb = member.features(x_B_C_H_W)
    return emb, taps.out or [emb]


def ranking_loss(
    pred_B: torch.Tensor, target_B: torch.Tensor, margin: float = MARGIN
) -> torch.Tensor:
    """The pairwise ranking loss of Yoo and Kweon (2019), eq. 2, as a scalar.

    The batch is split into pairs ``(i, B-1-i)``; a pair costs
    ``max(0, margin - sign(l_i - l_j) * (p_i - p_j))``: nothing when the predicted losses
    ``p`` order the pair as the target losses ``l`` do, by at least ``margin``. An odd
    last item is left out; a batch of fewer than 2 costs 0.
    """
    n = pred_B.shape[0] // 2 * 2
    if n < 2:
        return pred_B.sum() * 0.0
    pred, target = pred_B[:n], target_B[:n].detach()
    diff_p = (pred - pred.flip(0))[: n // 2]
    diff_t = (target - target.flip(0))[: n // 2]
    sign = 2.0 * (diff_t > 0).to(pred.dtype) - 1.0
    return torch.clamp(margin - sign * diff_p, min=0.0).mean()


class LossPredictionModule(CoupledModule):
    """The loss-prediction head: ``[tap features] -> predicted loss [B]``."""

    name = "loss_prediction"

    def __init__(self, tap_channels: list[int], hidden: int = HIDDEN) -> None:
        super().__init__()
        self.tap_channels = list(tap_channels)
        self.hidden = hidden
        self.fcs = nn.ModuleList(nn.Linear(c, hidden) for c in self.tap_channels)
        self.out = nn.Linear(hidden * len(self.tap_channels), 1)

    def config(self) -> dict[str, Any]:
        return {"tap_channels": self.tap_channels, "hidden": self.hidden}

    def predict(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Predicted loss ``[B]`` from the tap outputs (``[B, C, H, W]`` or ``[B, D]``)."""
        parts = []
        for fc, f in zip(self.fcs, taps, strict=True):
            pooled = f.mean(dim=(2, 3)) if f.dim() == 4 else f
            parts.append(F.relu(fc(pooled)))
        out: torch.Tensor = self.out(torch.cat(parts, dim=1)).squeeze(1)
        return out

    def forward_aux(
        self, member: Classifier, x_B_C_H_W: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb, taps = features_and_taps(member, x_B_C_H_W)
        return emb, self.predict(taps)


class LossPredictionSession:
    """Trains the head with the classifier (``StepHook``); built at the first batch, when
    the tap shapes are known, from its own seed (the classifier's stream is untouched)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.module: LossPredictionModule | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.losses: list[float] = []
        self.seconds = 0.0
        self.hook = self

    def forward(
        self, model: Classifier, xb: torch.Tensor, yb: torch.Tensor, step: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        emb, taps = features_and_taps(model, xb)
        logits = model.head(emb)
        if self.module is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.module = LossPredictionModule([int(t.shape[1]) for t in taps])
            self.opt = torch.optim.Adam(self.module.parameters(), lr=LR)
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        if step > DETACH_AT * steps:
            taps = [t.detach() for t in taps]
        target = F.cross_entropy(logits, yb, reduction="none")
        extra = WEIGHT * ranking_loss(self.module.predict(taps), target)
        self.losses.append(float(extra.detach()))
        self.seconds += time.perf_counter() - t0
        return logits, extra

    def after_step(self, step: int, steps: int) -> None:
        assert self.opt is not None
        self.opt.step()

    def finish(self, model: Classifier) -> CoupledModule:
        if self.module is None:
            raise RuntimeError("the loss-prediction head was never trained (no training step)")
        return self.module.eval()

    def info(self) -> dict[str, Any]:
        return {
            "trains": "loss_prediction",
            "ranking_loss_end": last_mean(self.losses),
            "steps": len(self.losses),
            "seconds": round(self.seconds, 3),
        }
