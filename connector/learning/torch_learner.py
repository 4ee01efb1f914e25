"""The real ``Learner``: torchvision models trained by ``training``, scored by ``scoring``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from connector.contracts.errors import CheckpointError, ConfigError
from connector.contracts.learner import ImageRef, Progress, Scored, UnlabeledPool
from connector.learning.checkpoints import load_checkpoint, save_checkpoint
from connector.learning.coupled import COUPLED, Coupling
from connector.learning.coupled.vaal import STEPS as VAAL_STEPS
from connector.learning.images import Decoder, decode_image, decode_many, infer_channels
from connector.learning.model import ModelSpec
from connector.learning.scoring import score_pool
from connector.learning.selfsup import (
    Encoder,
    PretrainConfig,
    check_pretext,
    load_encoder,
    pretrain_encoder,
    save_encoder,
)
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
    #: Self-supervised pre-training on the pool (``connector.learning.selfsup``); off by
    #: default. The encoder lives at ``encoder_path`` (under ``state.dir``).
    pretraining: PretrainConfig = field(default_factory=PretrainConfig)
    encoder_path: Path | None = None
    _encoder: tuple[Path, int, Encoder] | None = field(default=None, repr=False)

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
        overrides: dict[str, Any] = {"seed": m.seed, "device": m.device}
        if m.epochs is not None:
            overrides["epochs"] = m.epochs
        if m.batch_size is not None:
            overrides["batch_size"] = m.batch_size
        if m.learning_rate is not None:
            overrides["lr"] = m.learning_rate
        pretraining = PretrainConfig(
            pretext=m.pretrain,
            every_rounds=m.pretrain_every_rounds,
            steps=m.pretrain_steps,
            max_unlabeled=m.pretrain_max_unlabeled,
            device=m.device,
        )
        return cls(
            spec,
            TrainConfig(**overrides),
            settings.strategy.score_batch_size,
            semi=semi,
            pretraining=pretraining,
            encoder_path=settings.encoder_path(),
        )

    def init_model(self, classes: Sequence[str], *, seed: int) -> TrainedModel:
        encoder = self.encoder()
        if encoder is None:
            return TrainedModel.untrained(self.spec, list(classes), seed=seed)
        return TrainedModel.untrained(
            self.spec, list(classes), seed=seed, channels=encoder.data_channels, encoder=encoder
        )

    def encoder(self) -> Encoder | None:
        """The self-supervised encoder to start from, if pre-training is on and one that
        fits the model is at ``encoder_path`` (re-read when the file changes)."""
        path = self.encoder_path
        if not self.pretraining.enabled or path is None or not path.exists():
            return None
        stamp = path.stat().st_mtime_ns
        if self._encoder is None or self._encoder[:2] != (path, stamp):
            try:
                self._encoder = (path, stamp, load_encoder(path))
            except CheckpointError as exc:  # partial or foreign: pre-trained again
                log.warning("%s", exc)
                return None
        encoder = self._encoder[2]
        return encoder if encoder.fits(self.spec) else None

    def pretrain_due(self, round: int) -> bool:
        """No encoder yet (or one for another model), or ``every_rounds`` rounds since."""
        if not self.pretraining.enabled or self.encoder_path is None:
            return False
        encoder = self.encoder()
        if encoder is None:
            return True
        last = int(encoder.info.get("round", -1))
        every = self.pretraining.every_rounds
        return every > 0 and round - last >= every

    def pretrain(
        self,
        pool: UnlabeledPool,
        *,
        round: int,
        seed: int,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Pre-train the encoder on ``max_unlabeled`` pool images (continuing the last
        one), save it atomically at ``encoder_path``; what it did."""
        cfg, path = self.pretraining, self.encoder_path
        if path is None:
            raise ValueError("pretrain needs encoder_path")
        if len(pool) == 0:
            raise ConfigError(
                f"model.pretrain = {cfg.pretext!r} pre-trains on unlabeled images, and the "
                "pool has none (every item is labeled, queued or in the validation split, "
                "or the bucket holds no image yet); add images, or set model.pretrain = 'none'"
            )
        raw = pool.sample(cfg.max_unlabeled, np.random.default_rng([seed, 0x551F]))
        channels = self.spec.channels or infer_channels(raw[:64])
        check_pretext(cfg.pretext, channels)
        x, _ok, bad = decode_many(raw, channels, self.spec.image_size, self.decode)
        if bad:
            log.info("pre-training: %d of %d pool images not decodable", len(bad), len(raw))
        encoder = pretrain_encoder(
            x, self.spec, cfg, seed=seed, hflip=self.train_config.hflip,
            init=self.encoder(), progress=progress,
        )  # fmt: skip
        encoder.info["round"] = round
        save_encoder(encoder, path)
        return dict(encoder.info)

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
            encoder=self.encoder(),
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
