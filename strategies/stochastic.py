"""Stochastic batch acquisition: sample a batch in proportion to a per-item score.

Taking the top k of a per-item score fills a batch with near-duplicates; sampling the
batch from a distribution that favours high scores keeps most of the benefit, adds
diversity for free, and costs one pass over the pool. Three distributions:

* ``softmax``:  ``p_i ∝ exp(beta * s_i)``
* ``power``:    ``p_i ∝ s_i ** beta`` (scores must be non-negative)
* ``softrank``: ``p_i ∝ rank_i ** -beta`` (rank 1 = highest score; scale-free)

``beta = 0`` is uniform random sampling; ``beta -> inf`` is top-k. The batch is drawn
without replacement with the Gumbel-top-k trick: perturb ``log p_i`` with i.i.d.
Gumbel(0, 1) noise and take the k largest (Kool, van Hoof and Welling, "Stochastic
Beams and Where to Find Them", ICML 2019).

Reference: A. Kirsch, S. Farquhar, P. Atighehchian, A. Jesson, F. Branchaud-Charron and
Y. Gal, "Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning",
TMLR 2023 (arXiv:2106.12059).
"""

from __future__ import annotations

import math

import numpy as np

from strategies._common import check_rng, clip_k, empty_selection, top_k_order
from strategies.base import PoolOutputs, Selection
from strategies.scoring import check_chunk_rows, scorer

MODES = ("power", "softmax", "softrank")


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a number, got {type(beta).__name__}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0 (0 = uniform random), got {beta}")
    return float(beta)


def stochastic_log_weights(scores_N: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """Unnormalised ``log p_i`` of the sampling distribution, float64 ``[N]``, finite."""
    s = np.asarray(scores_N, dtype=np.float64)
    if mode == "softmax":
        return beta * s
    if mode == "power":
        if s.size and s.min() < 0:
            raise ValueError(
                "power sampling needs non-negative scores (it samples p ∝ score ** beta); "
                "use mode 'softmax' or 'softrank' for this score"
            )
        # A zero score gets the smallest positive weight, not -inf: zero-score items then
        # come last, in random order, instead of breaking the Gumbel-top-k with -inf.
        return beta * np.log(np.maximum(s, np.finfo(np.float64).tiny))
    if mode == "softrank":
        ranks = np.empty(s.shape[0], dtype=np.float64)
        ranks[top_k_order(s, s.shape[0])] = np.arange(1, s.shape[0] + 1, dtype=np.float64)
        return -beta * np.log(ranks)
    raise ValueError(f"unknown stochastic mode {mode!r}; known modes: {', '.join(MODES)}")


class StochasticBatch:
    """Power, softmax or soft-rank sampling over any per-item score (Kirsch et al. 2023).

    Parameters:
        mode: ``power``, ``softmax`` or ``softrank`` (the registry name picks it).
        base: the per-item score to sample from (any name in ``strategies.SCORERS``);
            ``bald`` gives PowerBALD for MC-dropout or ensembles, ``entropy`` works for a
            deterministic model (K = 1) too.
        beta: inverse temperature, >= 0; 1 is the paper's default.
    """

    needs_embeddings = False

    def __init__(
        self, mode: str, *, base: str = "entropy", beta: float = 1.0, chunk_rows: int | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown stochastic mode {mode!r}; known modes: {', '.join(MODES)}")
        self.name = mode
        self.mode = mode
        self.base = base
        self._fn = scorer(base)
        self.beta = _check_beta(beta)
        self.chunk_rows = check_chunk_rows(chunk_rows)

    def __repr__(self) -> str:
        return f"StochasticBatch({self.mode!r}, base={self.base!r}, beta={self.beta})"

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """The base score of every item, float64 ``[N]``."""
        return self._fn(outputs.probs_N_K_C, chunk_rows=self.chunk_rows)

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        k = clip_k(k, outputs.n)
        info = {"base": self.base, "beta": self.beta, "mode": self.mode}
        if k == 0:
            return empty_selection(self.name, info)
        scores = self.score(outputs)
        perturbed = stochastic_log_weights(scores, self.mode, self.beta)
        perturbed += rng.gumbel(size=scores.shape[0])
        idx = top_k_order(perturbed, k)
        return Selection(idx, scores[idx], self.name, info)
