"""Per-item scorers by name, and the strategy that takes the top k of one of them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strategies._common import select_top
from strategies.base import PoolOutputs, Selection
from strategies.bayesian import bald, kl_to_consensus, mean_std, variation_ratios, vote_entropy
from strategies.uncertainty import entropy, least_confidence, margin, ratio

#: ``(probs_N_K_C, *, chunk_rows=None) -> scores_N``: float64, higher = more informative.
ScoreFn = Callable[..., np.ndarray]

#: Every per-item score by its registry name.
SCORERS: dict[str, ScoreFn] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "ratio": ratio,
    "entropy": entropy,
    "bald": bald,
    "variation_ratios": variation_ratios,
    "mean_std": mean_std,
    "vote_entropy": vote_entropy,
    "kl_to_consensus": kl_to_consensus,
}


def scorer(name: str) -> ScoreFn:
    """The per-item score function called ``name``; ValueError lists the known ones."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(
            f"unknown per-item score {name!r}; known scores: {', '.join(sorted(SCORERS))}"
        ) from None


def check_chunk_rows(chunk_rows: int | None) -> int | None:
    if chunk_rows is None:
        return None
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer or None, got {chunk_rows!r}")
    return chunk_rows


class TopScore:
    """The k items with the highest per-item score, ties broken by the lower index.

    The reference of each score is in its function's docstring (``strategies.uncertainty``
    and ``strategies.bayesian``). Top-k of a per-item score ignores redundancy inside the
    batch; for batches larger than a handful prefer a batch-aware selector (``power``,
    ``batchbald``, ``cluster_margin``).
    """

    needs_embeddings = False

    def __init__(self, score_name: str, *, chunk_rows: int | None = None) -> None:
        self._fn = scorer(score_name)
        self.name = score_name
        self.chunk_rows = check_chunk_rows(chunk_rows)

    def __repr__(self) -> str:
        return f"TopScore({self.name!r}, chunk_rows={self.chunk_rows})"

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """float64 ``[N]``: this strategy's score of every pool item."""
        return self._fn(outputs.probs_N_K_C, chunk_rows=self.chunk_rows)

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        return select_top(self.name, self.score, outputs, k, rng)
