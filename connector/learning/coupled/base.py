"""What the training loop and the trained model see of a training-coupled method.

Three shapes of coupling, one interface:

- ``StepHook``: joins the classifier's training loop (``training._fit_member``). It runs
  the forward pass of each batch itself (so it can read intermediate features, or add
  unlabeled images to the batch), returns the logits of the labeled images and an extra
  loss, and steps its own networks after the classifier's step. Loss prediction and WAAL.
- ``Session.finish``: trains after the classifier, on the same decoded tensors. VAAL.
- ``CoupledModule``: what the trained model keeps (an ``nn.Module`` with a JSON config
  that rebuilds it from a checkpoint) and runs in the same pass as the probabilities:
  ``forward_aux`` returns the classifier's embeddings and one value per image, the
  strategy's ``PoolOutputs.aux[name]``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from connector.learning.model import Classifier


class CoupledModule(nn.Module):
    """A trained coupled network; subclasses set ``name`` and implement both methods."""

    name: str = ""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (the checkpoint rebuilds from them)."""
        raise NotImplementedError

    def forward_aux(
        self, member: Classifier, x_B_C_H_W: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(emb_B_D, aux_B)`` of a normalised batch: the member's embeddings, and the
        strategy's per-item value (float32, finite). Called in eval mode, no grad."""
        raise NotImplementedError


class StepHook(Protocol):
    """Joins each optimiser step of the classifier's training (see module docstring)."""

    def forward(
        self, model: Classifier, xb: torch.Tensor, yb: torch.Tensor, step: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_B_C, extra_loss)`` of a normalised, augmented labeled batch;
        ``step`` counts from 1 to ``steps``. The extra loss is added to the classifier's."""
        ...

    def after_step(self, step: int, steps: int) -> None:
        """After the classifier's optimiser step: update the hook's own networks."""
        ...


class Session(Protocol):
    """One coupled training, from the decoded labeled set to a ``CoupledModule``."""

    @property
    def hook(self) -> StepHook | None:
        """Joins the classifier's loop, or None (VAAL trains after it)."""
        ...

    def finish(self, model: Classifier) -> CoupledModule:
        """The trained module, once the classifier ``model`` is trained."""
        ...

    def info(self) -> dict[str, Any]:
        """What the coupled training did (steps, seconds, losses), JSON-serialisable."""
        ...


def last_mean(values: list[float], n: int = 20) -> float | None:
    """Mean of the last ``n`` values (a loss at the end of training), or None."""
    tail = values[-n:]
    return round(sum(tail) / len(tail), 5) if tail else None
