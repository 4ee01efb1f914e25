"""BADGE: k-means++ seeding on the gradient embeddings of the last layer.

With the model's own guess ``yhat_n = argmax_c p_n(c)`` as the label, the gradient of the
cross-entropy with respect to the last linear layer is the outer product
``g_n = (p_n - onehot(yhat_n)) ⊗ e_n`` of a ``[C]`` vector ``a_n`` and the penultimate
features ``e_n``. Its norm grows with uncertainty, its direction with the features, so
k-means++ seeding on ``g`` picks items that are both uncertain and diverse.

The ``N x (C * D)`` matrix of ``g`` is never materialised: inner products factorise,
``<g_n, g_m> = (a_n . a_m)(e_n . e_m)``, so the squared distance to a new centre costs
O(C + D) per item and one k-means++ step at most O(N * (C + D)) with O(N) memory (less
where the triangle inequality prunes, see ``strategies._nearest``).

Reference: J. T. Ash, C. Zhang, A. Krishnamurthy, J. Langford and A. Agarwal, "Deep
Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds", ICLR 2020
(arXiv:1906.03671); D. Arthur and S. Vassilvitskii, "k-means++: The Advantages of
Careful Seeding", SODA 2007.
"""

from __future__ import annotations

import numpy as np

from strategies._common import check_rng, clip_k, empty_selection, require_embeddings, sq_norms
from strategies._nearest import NearestCentre
from strategies.base import PoolOutputs, Selection


def gradient_factors(probs_N_K_C: np.ndarray) -> np.ndarray:
    """``a_n = p_n - onehot(argmax p_n)`` with ``p_n = mean_k p_n[k]``, float64 ``[N, C]``.

    Ties in the argmax go to the lower class index.
    """
    p = probs_N_K_C.mean(axis=1, dtype=np.float64)
    p[np.arange(p.shape[0]), p.argmax(axis=1)] -= 1.0
    return p


def sample_d2(weights_N: np.ndarray, alive_N: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probability ∝ ``weights`` among ``alive`` items.

    When every alive weight is 0 (the rest of the pool coincides with the centres) the
    lowest alive index is returned, so the result is always a new item.
    """
    w = np.where(alive_N, weights_N, 0.0)
    cdf = np.cumsum(w)
    total = cdf[-1]
    if not total > 0:
        return int(np.flatnonzero(alive_N)[0])
    j = int(np.searchsorted(cdf, rng.random() * total, side="right"))
    j = min(j, weights_N.shape[0] - 1)
    if not alive_N[j] or w[j] <= 0:  # rounding at the top end: step back to a valid item
        j = int(np.flatnonzero((w > 0) & (cdf <= cdf[j]))[-1])
    return j


class Badge:
    """BADGE (Ash et al. 2020): k-means++ on implicit gradient embeddings.

    The first centre is the item with the largest gradient norm (as in the authors'
    code; ties go to the lower index), then each centre is drawn with probability
    proportional to the squared distance to the nearest centre so far.
    ``Selection.scores`` holds that squared distance at the time of the draw (the
    squared gradient norm for the first one). ``p_n`` is the mean over the K passes.
    """

    name = "badge"
    needs_embeddings = True

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """Squared norm of every item's gradient embedding, ``|a_n|^2 |e_n|^2``."""
        emb = require_embeddings(outputs, self.name)
        a = gradient_factors(outputs.probs_N_K_C)
        out: np.ndarray = np.einsum("nc,nc->n", a, a) * sq_norms(emb)
        return out

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        emb = require_embeddings(outputs, self.name)
        n = emb.shape[0]
        k = clip_k(k, n)
        if k == 0:
            return empty_selection(self.name)
        a_N_C = gradient_factors(outputs.probs_N_K_C)
        sq_a = np.einsum("nc,nc->n", a_N_C, a_N_C)
        sq_e = sq_norms(emb)
        sq_g = sq_a * sq_e
        picked = np.empty(k, dtype=np.int64)
        scores = np.empty(k, dtype=np.float64)
        alive = np.ones(n, dtype=bool)

        def item_dists(rows: np.ndarray | None, j: int) -> np.ndarray:
            # |g_n - g_j|^2 = |g_n|^2 + |g_j|^2 - 2 (a_n . a_j)(e_n . e_j)
            a, e, g = (a_N_C, emb, sq_g) if rows is None else (a_N_C[rows], emb[rows], sq_g[rows])
            out = np.multiply(a @ a_N_C[j], e @ emb[j], dtype=np.float64)
            out *= -2.0
            out += g
            out += sq_g[j]
            np.maximum(out, 0.0, out=out)
            return out

        tracker = NearestCentre(
            n, item_dists, lambda j: item_dists(picked[: tracker.n_centres], j), np.sqrt(sq_g)
        )
        for step in range(k):
            j = int(np.argmax(sq_g)) if step == 0 else sample_d2(tracker.min_d, alive, rng)
            picked[step] = j
            scores[step] = float(sq_g[j]) if step == 0 else float(tracker.min_d[j])
            alive[j] = False
            if step + 1 < k:
                tracker.add(j)
        info = {"rows_computed_per_step": round(tracker.rows_computed / max(1, k - 1), 1)}
        return Selection(picked, scores, self.name, info)
