"""The learner of ``simulate``: the daemon's ``TorchLearner``, sharing what the paired
design makes identical between the strategies of a seed (first fits, first encoders)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connector.contracts.learner import ImageRef, Progress, UnlabeledPool
from connector.learning.images import DecodeMemo
from connector.learning.model import ModelSpec
from connector.learning.selfsup import Encoder, PretrainConfig, save_encoder
from connector.learning.semi import SemiConfig
from connector.learning.torch_learner import TorchLearner
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig


class SimulationLearner(TorchLearner):
    """``TorchLearner`` that remembers its first-round fits, and decodes each image once.

    Training is deterministic for a given labeled set and seed, and the paired design
    makes the first trained round (on the ``initial`` labels) identical for every strategy
    of a seed: such a fit that was already made in this process is returned again rather
    than repeated (as the old simulation shared its initial model). Only those are kept,
    so memory holds one model per seed, not one per round. Kept apart from the daemon's
    learner, which never sees the same labeled set twice.
    """

    def __init__(
        self,
        spec: ModelSpec,
        train: TrainConfig,
        initial: int,
        semi: SemiConfig | None = None,
        pretraining: PretrainConfig | None = None,
    ) -> None:
        super().__init__(
            spec,
            train,
            decode=DecodeMemo(),
            semi=semi or SemiConfig(),
            pretraining=pretraining or PretrainConfig(),
        )
        self._initial = initial
        self._fits: dict[tuple[Any, ...], TrainedModel] = {}
        self._encoders: dict[tuple[Any, ...], Encoder] = {}

    def pretrain(
        self,
        pool: UnlabeledPool,
        *,
        round: int,
        seed: int,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """``TorchLearner.pretrain``; a first pre-training (no encoder to continue) is
        made once per pool, round and seed in this process and copied to the other runs:
        every strategy of a seed starts from the same pool (the paired design)."""
        first = self.encoder() is None
        key = (round, seed, tuple(getattr(pool, "keys", ())))
        kept = self._encoders.get(key) if first else None
        if kept is None:
            info = super().pretrain(pool, round=round, seed=seed, progress=progress)
            encoder = self.encoder()
            if first and encoder is not None:
                self._encoders = {key: encoder}  # one kept: memory holds one encoder
            return info
        assert self.encoder_path is not None
        save_encoder(kept, self.encoder_path)
        return dict(kept.info)

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
        if len(images) != self._initial:
            return super().fit(
                images, labels, classes, seed=seed, progress=progress, unlabeled=unlabeled,
                trains=trains,
            )  # fmt: skip
        # A coupled strategy's first model is its own (trained with its networks).
        key = (tuple(str(i) for i in images), tuple(labels), tuple(classes), seed, trains)
        if key not in self._fits:
            self._fits[key] = super().fit(
                images, labels, classes, seed=seed, progress=progress, unlabeled=unlabeled,
                trains=trains,
            )  # fmt: skip
        return self._fits[key]

    def supervised(self) -> TorchLearner:
        """The same learner without the unlabeled pool (sharing the decoded images)."""
        return TorchLearner(self.spec, self.train_config, self.batch_size, self.decode)
