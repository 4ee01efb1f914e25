"""The learner the round logic sees: fit, evaluate, score, save, load; and the pool scorer.

The round engine depends on the ``Learner`` protocol only, so unit tests can drive rounds with a
fast learner; ``TorchLearner`` is the real one over ``training`` and ``scoring``. The SCORE
phase reads the candidates through a ``PoolScorer``: in the daemon's process by default,
or on a Ray cluster (``connector.scoring``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from strategies import PoolOutputs

ImageRef = bytes | Path
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Scored:
    """Pool scoring output: ``outputs`` (with ids) and the unreadable items; ``info`` says
    how the scoring went (engine, shards, retries), for the round's diagnostics."""

    outputs: PoolOutputs
    failures: list[tuple[str, str]]
    info: dict[str, Any] = field(default_factory=dict)


class UnlabeledPool(Protocol):
    """Unlabeled pool images a learner may train on (semi- or self-supervised).

    Images are read from the object store when asked for and never cached: the local
    cache holds labeled items only. The validation split is never part of it.
    """

    def __len__(self) -> int:
        """How many items ``sample`` draws from."""
        ...

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        """Encoded images of ``min(n, len(self))`` distinct random items; unreadable
        ones are left out, so fewer may come back."""
        ...


class Learner(Protocol):
    def fit(
        self,
        images: Sequence[ImageRef],
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        seed: int,
        progress: Progress | None = None,
        unlabeled: UnlabeledPool | None = None,
    ) -> Any:
        """Train a new model on the labeled set; returns an opaque model. A learner
        configured to use the unlabeled pool draws from ``unlabeled``; others ignore it."""
        ...

    def init_model(self, classes: Sequence[str], *, seed: int) -> Any:
        """An untrained model (pretrained backbone when configured), for cold starts."""
        ...

    def evaluate(
        self, model: Any, images: Sequence[ImageRef], labels: Sequence[int]
    ) -> dict[str, Any]:
        """Metrics on a labeled set: at least ``accuracy`` and ``n``."""
        ...

    def score(
        self,
        model: Any,
        items: Iterable[tuple[str, bytes | Exception]],
        *,
        with_embeddings: bool,
        mc_samples: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Scored:
        """Probabilities ``[N, K, C]`` (K = ``mc_samples`` dropout passes, times ensemble
        members) and embeddings of pool items; bad items become failures. ``seed`` fixes
        the dropout masks."""
        ...

    def embed_labeled(self, model: Any, images: Sequence[ImageRef]) -> np.ndarray:
        """Embeddings ``[M, D]`` of labeled items, for diversity strategies."""
        ...

    def save(self, model: Any, path: Path, extra: dict[str, Any]) -> None: ...

    def load(self, path: Path) -> Any:
        """The model saved at ``path``; ``CheckpointError`` if the file is partial."""
        ...


class CoupledLearner(Learner, Protocol):
    """A learner that can train what a training-coupled strategy needs (loss prediction,
    VAAL, WAAL: ``strategies.coupled``) and score its per-item values into
    ``PoolOutputs.aux``. A learner without ``coupled_training`` trains none of them; the
    round plan refuses such a strategy for it (``rounds.plan.check_learner``)."""

    #: The ``trains`` names it can train.
    coupled_training: frozenset[str]

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
    ) -> Any:
        """``Learner.fit``, also training ``trains`` (one of ``coupled_training``);
        VAAL and WAAL draw their unlabeled images from ``unlabeled``."""
        ...


class PretrainingLearner(Learner, Protocol):
    """A learner that pre-trains its backbone on the unlabeled pool (self-supervised:
    ``learning.selfsup``). The round engine asks ``pretrain_due`` at TRAIN, and at a cold
    start whose strategy reads embeddings; ``fit`` and ``init_model`` use the encoder."""

    def pretrain_due(self, round: int) -> bool:
        """Whether round ``round`` should pre-train (no encoder yet, or a refresh)."""
        ...

    def pretrain(
        self,
        pool: UnlabeledPool,
        *,
        round: int,
        seed: int,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Pre-train on images drawn from ``pool`` and keep the encoder (durably, before
        returning); returns what it did, for the round's metrics."""
        ...


class PoolScorer(Protocol):
    """Scores a round's candidates, given by key, with the round's model."""

    def score_keys(
        self,
        model: Any,
        keys: Sequence[str],
        *,
        with_embeddings: bool,
        mc_samples: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Scored:
        """``Learner.score`` over the objects ``keys`` of the pool: rows in the order of
        ``keys``, unreadable objects in ``failures``; an error of the whole store (an
        outage, rejected credentials) is raised, never turned into failures."""
        ...

    def describe(self) -> str:
        """Where the scoring runs, for ``check`` and logs (no secrets)."""
        ...

    def close(self) -> None:
        """Release what the scorer holds (a cluster connection); idempotent."""
        ...
