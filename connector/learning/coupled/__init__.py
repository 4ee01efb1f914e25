"""Training-coupled acquisition: what loss prediction, VAAL and WAAL train with the
classifier, and what the trained model outputs for their strategies.

The strategies (``strategies.coupled``) are pure: they read ``PoolOutputs.aux[name]``.
This package trains the networks that produce those arrays: ``Coupling`` is what the
round's TRAIN phase asks the learner for (a name, and the unlabeled pool VAAL and WAAL
train on); ``Coupling.start`` gives the ``Session`` the training loop drives;
``build_module`` rebuilds a trained module from a checkpoint. See docs/model.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from connector.contracts.errors import ConfigError
from connector.contracts.learner import Progress, UnlabeledPool
from connector.learning.coupled.base import CoupledModule, Session, StepHook
from connector.learning.coupled.loss_prediction import LossPredictionModule, LossPredictionSession
from connector.learning.coupled.vaal import STEPS as VAAL_STEPS
from connector.learning.coupled.vaal import VAALModule, VAALSession
from connector.learning.coupled.waal import WAALModule, WAALSession
from connector.learning.images import Decoder, decode_image, decode_many

log = logging.getLogger(__name__)

_MODULES: dict[str, type[CoupledModule]] = {
    "loss_prediction": LossPredictionModule,
    "vaal": VAALModule,
    "waal": WAALModule,
}
#: Every method this package trains (``strategies.trains`` of the coupled strategies).
COUPLED = frozenset(_MODULES)
#: Unlabeled images decoded per training, at most, and at most this many bytes of them:
#: a bounded random sample of the candidates (digits: the whole pool; 224-pixel colour
#: images: about 440), decoded in memory, never written to disk.
UNLABELED_SAMPLE = 2000
UNLABELED_BYTES = 64 * 2**20


def build_module(name: str, config: dict[str, Any]) -> CoupledModule:
    """An untrained module of method ``name`` with the constructor arguments ``config``."""
    if name not in _MODULES:
        raise ConfigError(
            f"unknown coupled module {name!r} in a checkpoint; this connector knows "
            f"{', '.join(sorted(COUPLED))}"
        )
    return _MODULES[name](**config)


@dataclass(frozen=True)
class Coupling:
    """What to train beside the classifier.

    Attributes:
        trains: ``"loss_prediction"``, ``"vaal"`` or ``"waal"``.
        unlabeled: the pool VAAL and WAAL sample unlabeled images from (None: none).
        decode: the image decoder (``DecodeMemo`` in ``simulate``).
        seed: seeds the coupled networks and the unlabeled sample.
        vaal_steps: VAAL's optimiser steps (it trains after the classifier, with its
            own count; the others follow the classifier's steps).
    """

    trains: str
    unlabeled: UnlabeledPool | None = None
    decode: Decoder = decode_image
    seed: int = 0
    vaal_steps: int = VAAL_STEPS

    def __post_init__(self) -> None:
        if self.trains not in COUPLED:
            raise ConfigError(
                f"cannot train {self.trains!r} with the classifier; the torch learner trains "
                f"{', '.join(sorted(COUPLED))}"
            )

    def unlabeled_images(self, channels: int, size: int) -> torch.Tensor:
        """A bounded random sample of the pool, decoded: ``uint8 [U, C, size, size]``."""
        empty = torch.empty((0, channels, size, size), dtype=torch.uint8)
        if self.unlabeled is None or len(self.unlabeled) == 0:
            log.warning("%s: no unlabeled images to train on; its scores stay flat", self.trains)
            return empty
        n = min(UNLABELED_SAMPLE, UNLABELED_BYTES // (channels * size * size))
        rng = np.random.default_rng([self.seed, 0xC0DE])
        # An undecodable image is left out: SCORE quarantines it when it reads the item.
        x, _, _ = decode_many(self.unlabeled.sample(n, rng), channels, size, self.decode)
        return x

    def start(
        self,
        x_l: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool = True,
        hflip: bool = False,
        progress: Progress | None = None,
    ) -> Session:
        """The session for labeled images ``x_l`` (``uint8 [N, C, S, S]``), normalised
        with ``mean``/``std`` as the classifier's, augmented as its batches are."""
        seed = self.seed + 104_729  # apart from the classifier's seeds
        if self.trains == "loss_prediction":
            return LossPredictionSession(seed)
        x_u = self.unlabeled_images(int(x_l.shape[1]), int(x_l.shape[-1]))
        if self.trains == "waal":
            return WAALSession(x_u, mean, std, seed, augment=augment, hflip=hflip)
        return VAALSession(
            x_l, x_u, mean, std, int(x_l.shape[-1]), seed, steps=self.vaal_steps, progress=progress
        )


__all__ = [
    "COUPLED",
    "CoupledModule",
    "Coupling",
    "Session",
    "StepHook",
    "build_module",
]
