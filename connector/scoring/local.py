"""Scoring in the daemon's process: the store's reads feed the learner (the default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from connector.contracts.learner import Learner, Progress, Scored
from connector.contracts.ports import ObjectStore
from connector.storage.window import raise_store_errors


@dataclass
class LocalScorer:
    """``learner.score`` over ``store.read_many(keys)``, ``read_concurrency`` reads at once.

    An error of the whole store (an outage, rejected keys) stops the scoring
    (``raise_store_errors``); a bad object becomes one of the failures.
    """

    learner: Learner
    store: ObjectStore
    read_concurrency: int = 8

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
        scored = self.learner.score(
            model,
            raise_store_errors(self.store.read_many(keys, max_workers=self.read_concurrency)),
            with_embeddings=with_embeddings,
            mc_samples=mc_samples,
            seed=seed,
            progress=progress,
        )
        return Scored(scored.outputs, scored.failures, {"engine": "local", **scored.info})

    def describe(self) -> str:
        return "local: the daemon scores the pool in its own process"

    def close(self) -> None:
        return None
