"""The real ``Learner``: torchvision models trained by ``training``, scored by ``scoring``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from connector.contracts.learner import ImageRef, Progress, Scored, UnlabeledPool
from connector.learning.checkpoints import load_checkpoint, save_checkpoint
from connector.learning.coupled import COUPLED, Coupling
from connector.learning.coupled.vaal import STEPS as VAAL_STEPS
from connector.learning.images import Decoder, decode_image
from connector.learning.model import ModelSpec
from connector.learning.scoring import score_pool
from connector.learning.semi import FixMatch, SemiConfig, check_unlabeled, draw_unlabeled
from connector.learning.training import TrainConfig, TrainedModel, evaluate, train_classifier
from connector.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TorchLearner:
    spec: ModelSpec
    train_config: TrainConfig
    batch_size: int = 256
    #: How images are decoded: ``decode_image``, or a ``DecodeMemo`` where the same
    #: images come back round after round (``simulate``).
    decode: Decoder = decode_image
    #: VAAL's optimiser steps per round (``learning.coupled.vaal``).
    vaal_steps: int = VAAL_STEPS
    #: What it trains for training-coupled strategies (``contracts.learner.CoupledLearner``).
    coupled_training = COUPLED
    #: Training on the unlabeled pool too (``connector.learning.semi``); off by default.
    semi: SemiConfig = field(default_factory=SemiConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> TorchLearner:
        m = settings.model
        semi = SemiConfig(
            mode=m.semi_supervised,
            threshold=m.semi_threshold,
            ratio=m.semi_ratio,
            max_unlabeled=m.semi_max_unlabeled,
        )
        spec = ModelSpec(
            arch=m.arch,
            weights=m.weights,
            freeze_backbone=m.freeze_backbone,
            image_size=m.image_size,
            channels=m.channels,
            dropout=m.dropout,
            ensemble_size=m.ensemble_size,
        )
        overrides: dict[str, Any] = {"seed": m.seed}
        if m.epochs is not None:
            overrides["epochs"] = m.epochs
        if m.batch_size is not None:
            overrides["batch_size"] = m.batch_size
        if m.learning_rate is not None:
            overrides["lr"] = m.learning_rate
        return cls(spec, TrainConfig(**overrides), settings.strategy.score_batch_size, semi=semi)

    def init_model(self, classes: Sequence[str], *, seed: int) -> TrainedModel:
        return TrainedModel.untrained(self.spec, list(classes), seed=seed)

    def fit(
        self,
        images: Sequence[ImageRef],
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        seed: int,
        progress: Progress | None = None,
        unlabeled: UnlabeledPool | None = None,
        trains: str | None = None,
    ) -> TrainedModel:
        cfg = TrainConfig(**{**self.train_config.__dict__, "seed": seed})
        coupling = None
        if trains is not None:
            coupling = Coupling(trains, unlabeled, self.decode, seed, self.vaal_steps)
        check_unlabeled(self.semi, unlabeled)
        term: FixMatch | None = None
        if self.semi.enabled and unlabeled is not None:
            x_unl = draw_unlabeled(
                self.semi, unlabeled, list(images), self.spec, seed=seed, decode=self.decode
            )
            if len(x_unl):
                term = FixMatch(x_unl, self.semi, hflip=cfg.hflip)
                floor = self.semi.min_steps
                cfg = replace(
                    cfg, min_steps=max(cfg.min_steps, floor), max_steps=max(cfg.max_steps, floor)
                )
            else:  # a transient store outage, or a pool of corrupt images: keep training
                log.warning(
                    "semi-supervised training: none of the %d sampled pool images could be "
                    "read or decoded; this run trains on the labels only",
                    min(self.semi.max_unlabeled, len(unlabeled)),
                )
        trained = train_classifier(
            list(images),
            list(labels),
            list(classes),
            self.spec,
            cfg,
            progress=progress,
            decode=self.decode,
            coupling=coupling,
            extra_loss=term,
        )
        if term is not None:
            trained.history["semi"] = term.stats()
        return trained

    def evaluate(
        self, model: TrainedModel, images: Sequence[ImageRef], labels: Sequence[int]
    ) -> dict[str, Any]:
        return evaluate(model, list(images), list(labels), self.decode)

    def score(
        self,
        model: TrainedModel,
        items: Iterable[tuple[str, bytes | Exception]],
        *,
        with_embeddings: bool,
        mc_samples: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Scored:
        result = score_pool(
            model,
            items,
            mc_samples=mc_samples,
            seed=seed,
            decode=self.decode,
            batch_size=self.batch_size,
            with_embeddings=with_embeddings,
            progress=progress,
        )
        return Scored(result.outputs, list(result.failures))

    def embed_labeled(self, model: TrainedModel, images: Sequence[ImageRef]) -> np.ndarray:
        return np.asarray(model.embed(list(images)), dtype=np.float32)

    def save(self, model: TrainedModel, path: Path, extra: dict[str, Any]) -> None:
        save_checkpoint(model, path, extra)

    def load(self, path: Path) -> TrainedModel:
        return load_checkpoint(path)
