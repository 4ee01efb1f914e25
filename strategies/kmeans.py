"""k-means in bounded memory, and the diversity strategy built on it.

``kmeans`` is plain Lloyd iteration after k-means++ seeding, blocked so that memory is
O(block^2 + k * D) above the input, randomness only from the passed generator, and empty
clusters re-seeded with the point farthest from its centre. It is shared by the k-means
diversity strategy, TypiClust and cluster-margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies._common import (
    DIST_BLOCK,
    check_rng,
    clip_k,
    empty_selection,
    min_sq_dist_to,
    require_embeddings,
    sq_norms,
)
from strategies._nearest import NearestCentre, euclidean_item_dists
from strategies.badge import sample_d2
from strategies.base import PoolOutputs, Selection


@dataclass(frozen=True)
class KMeansResult:
    """Centres ``[k, D]`` (float64), each item's cluster ``[N]`` and squared distance ``[N]``."""

    centres_k_D: np.ndarray
    labels_N: np.ndarray
    sq_dist_N: np.ndarray
    iterations: int


def kmeans_pp_seeds(
    x_N_D: np.ndarray, sq_N: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``k`` distinct row indices."""
    n = x_N_D.shape[0]
    alive = np.ones(n, dtype=bool)
    seeds = np.empty(k, dtype=np.int64)
    dists = euclidean_item_dists(x_N_D, sq_N)
    tracker = NearestCentre(n, dists, lambda j: dists(seeds[: tracker.n_centres], j), np.sqrt(sq_N))
    for step in range(k):
        j = int(rng.integers(n)) if step == 0 else sample_d2(tracker.min_d, alive, rng)
        seeds[step] = j
        alive[j] = False
        if step + 1 < k:
            tracker.add(j)
    return seeds


def _centre_sums(x_N_D: np.ndarray, labels_N: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of rows, float64 ``[k, D]``, by blocked one-hot products."""
    n, d = x_N_D.shape
    sums = np.zeros((k, d), dtype=np.float64)
    for r0 in range(0, n, DIST_BLOCK):
        lab = labels_N[r0 : r0 + DIST_BLOCK]
        onehot = np.zeros((k, lab.shape[0]), dtype=x_N_D.dtype)
        onehot[lab, np.arange(lab.shape[0])] = 1.0
        sums += onehot @ x_N_D[r0 : r0 + DIST_BLOCK]
    return sums


def kmeans(
    x_N_D: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    max_iter: int = 20,
    tol: float = 1e-4,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeds; stops when the inertia improves by < ``tol``.

    Reference: S. P. Lloyd, "Least Squares Quantization in PCM", IEEE Trans. Information
    Theory 28(2), 1982; Arthur and Vassilvitskii, SODA 2007.
    """
    n = x_N_D.shape[0]
    k = clip_k(k, n)
    if k == 0:
        raise ValueError("kmeans needs k >= 1 and a non-empty pool")
    sq_N = sq_norms(x_N_D)
    centres = x_N_D[kmeans_pp_seeds(x_N_D, sq_N, k, rng)].astype(np.float64)
    labels = np.zeros(n, dtype=np.int64)
    sq_dist = np.zeros(n, dtype=np.float64)
    prev = np.inf
    it = 0
    while True:
        # Labels and distances always refer to the current centres when the loop ends.
        sq_dist, labels = min_sq_dist_to(x_N_D, sq_N, centres.astype(x_N_D.dtype))
        inertia = float(sq_dist.sum())
        counts = np.bincount(labels, minlength=k)
        converged = prev - inertia <= tol * max(inertia, 1e-300)
        if it >= max_iter or (converged and (counts > 0).all()):
            break
        it += 1
        prev = inertia
        centres = _centre_sums(x_N_D, labels, k) / np.maximum(counts, 1)[:, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # Re-seed each empty cluster with the point farthest from its centre.
            far = np.argsort(-sq_dist, kind="stable")[: empty.size]
            centres[empty] = x_N_D[far]
    return KMeansResult(centres, labels, sq_dist, it)


def nearest_member_per_cluster(result: KMeansResult) -> np.ndarray:
    """For each non-empty cluster, the member nearest its centre (ties: lower index)."""
    order = np.lexsort((np.arange(result.labels_N.shape[0]), result.sq_dist_N, result.labels_N))
    labels_sorted = result.labels_N[order]
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = labels_sorted[1:] != labels_sorted[:-1]
    return order[first]


class KMeansDiversity:
    """k-means on the embeddings; the item nearest each centre, biggest clusters first.

    A representative, uncertainty-free batch: good for a cold start or as a baseline.
    Clusters left empty are topped up with the items farthest from their centres, so
    exactly ``min(k, N)`` distinct items come back. ``Selection.scores`` holds the size
    of the item's cluster (0 for a top-up).

    Reference: H. T. Nguyen and A. Smeulders, "Active Learning Using Pre-clustering",
    ICML 2004; Z. Xu, R. Akella and Y. Zhang, "Incorporating Diversity and Density in
    Active Learning for Relevance Feedback", ECIR 2007.
    """

    name = "kmeans"
    needs_embeddings = True

    def __init__(self, *, max_iter: int = 20) -> None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.max_iter = max_iter

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        emb = require_embeddings(outputs, self.name)
        k = clip_k(k, emb.shape[0])
        if k == 0:
            return empty_selection(self.name)
        res = kmeans(emb, k, rng, max_iter=self.max_iter)
        reps = nearest_member_per_cluster(res)
        sizes = np.bincount(res.labels_N, minlength=k).astype(np.float64)
        rep_scores = sizes[res.labels_N[reps]]
        order = np.lexsort((reps, -rep_scores))
        idx, scores = reps[order], rep_scores[order]
        if idx.shape[0] < k:
            rest = np.ones(emb.shape[0], dtype=bool)
            rest[idx] = False
            cand = np.flatnonzero(rest)
            extra = cand[np.lexsort((cand, -res.sq_dist_N[cand]))][: k - idx.shape[0]]
            idx = np.concatenate([idx, extra])
            scores = np.concatenate([scores, np.zeros(extra.shape[0])])
        info = {"iterations": res.iterations, "clusters": int((sizes > 0).sum())}
        return Selection(idx.astype(np.int64), scores, self.name, info)
