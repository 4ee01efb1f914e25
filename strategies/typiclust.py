"""TypiClust: typical items of uncovered clusters, for a cold start on a small budget.

Cluster the pool into ``min(labeled + k, max_clusters)`` clusters; then, k times, take
the cluster that holds the fewest labeled-or-chosen items (ties: the largest, then the
lowest cluster id) among clusters of at least ``min_cluster_size`` items, and pick its
most *typical* remaining member. Typicality is the inverse of the mean distance to the
``knn`` nearest neighbours inside the cluster, a density estimate. Labeled items are
assigned to their nearest pool cluster to count coverage.

Memory is O(block * cluster size); for a cluster larger than ``max_reference`` items
the neighbours are searched among ``max_reference`` members drawn with ``rng``, which
bounds the cost at O(N * max_reference * D) and keeps the density ordering (it estimates
the same density with a proportionally wider neighbourhood).

Reference: G. Hacohen, A. Dekel and D. Weinshall, "Active Learning on a Budget:
Opposite Strategies Suit High and Low Budgets", ICML 2022 (arXiv:2202.02794); defaults
(20 neighbours, clusters of at least 5, at most 500 clusters) follow the authors' code.
"""

from __future__ import annotations

import numpy as np

from strategies._common import (
    check_rng,
    clip_k,
    empty_selection,
    min_sq_dist_to,
    require_embeddings,
    sq_norms,
)
from strategies.base import PoolOutputs, Selection
from strategies.kmeans import kmeans

_BLOCK_ELEMENTS = 1 << 22


def typicality(
    x_s_D: np.ndarray, knn: int, rng: np.random.Generator, max_reference: int
) -> np.ndarray:
    """``1 / mean distance to the knn nearest other members``, float64 ``[s]``.

    A singleton has typicality 0. Rows are processed in blocks (no s x s matrix).
    """
    s = x_s_D.shape[0]
    if s < 2:
        return np.zeros(s, dtype=np.float64)
    ref = np.arange(s) if s <= max_reference else np.sort(rng.choice(s, max_reference, False))
    r = ref.shape[0]
    kk = min(knn, r - 1)
    sq = sq_norms(x_s_D)
    ref_x, ref_sq = x_s_D[ref], sq[ref]
    out = np.empty(s, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // r)
    for r0 in range(0, s, block):
        r1 = min(s, r0 + block)
        d = sq[r0:r1, None] + ref_sq[None, :] - 2.0 * (x_s_D[r0:r1] @ ref_x.T)
        np.maximum(d, 0.0, out=d)
        # A member is not its own neighbour.
        rows, cols = np.nonzero(ref[None, :] == np.arange(r0, r1)[:, None])
        d[rows, cols] = np.inf
        near = np.partition(d, kk - 1, axis=1)[:, :kk]
        out[r0:r1] = 1.0 / (np.sqrt(near).mean(axis=1) + 1e-12)
    return out


class TypiClust:
    """TypiClust (Hacohen et al. 2022): the most typical item of each uncovered cluster.

    ``Selection.scores`` holds the typicality of each chosen item. Best for the first
    rounds (budgets of a few items per class); uncertainty wins once the model is good.
    """

    name = "typiclust"
    needs_embeddings = True

    def __init__(
        self,
        *,
        knn: int = 20,
        min_cluster_size: int = 5,
        max_clusters: int = 500,
        max_reference: int = 2048,
        max_iter: int = 20,
    ) -> None:
        for pname, value in (
            ("knn", knn),
            ("min_cluster_size", min_cluster_size),
            ("max_clusters", max_clusters),
            ("max_reference", max_reference),
            ("max_iter", max_iter),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{pname} must be a positive integer, got {value!r}")
        if max_reference < 2:
            raise ValueError(f"max_reference must be >= 2, got {max_reference}")
        self.knn = knn
        self.min_cluster_size = min_cluster_size
        self.max_clusters = max_clusters
        self.max_reference = max_reference
        self.max_iter = max_iter

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        emb = require_embeddings(outputs, self.name)
        n = emb.shape[0]
        k = clip_k(k, n)
        labeled = outputs.labeled_emb_M_D
        n_labeled = 0 if labeled is None else int(labeled.shape[0])
        if k == 0:
            return empty_selection(self.name)
        n_clusters = min(n_labeled + k, self.max_clusters, n)
        res = kmeans(emb, n_clusters, rng, max_iter=self.max_iter)
        covered = np.zeros(n_clusters, dtype=np.int64)
        if labeled is not None and n_labeled > 0:
            _, lab_cluster = min_sq_dist_to(labeled, sq_norms(labeled), res.centres_k_D)
            covered += np.bincount(lab_cluster, minlength=n_clusters)
        sizes = np.bincount(res.labels_N, minlength=n_clusters)
        # Members of each cluster, most typical first (ties: lower index).
        queues: list[np.ndarray] = []
        typ_N = np.zeros(n, dtype=np.float64)
        by_cluster = np.argsort(res.labels_N, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for c in range(n_clusters):
            members = by_cluster[bounds[c] : bounds[c + 1]]
            t = typicality(emb[members], self.knn, rng, self.max_reference)
            typ_N[members] = t
            queues.append(members[np.lexsort((members, -t))])
        heads = np.zeros(n_clusters, dtype=np.int64)
        picked = np.empty(k, dtype=np.int64)
        for step in range(k):
            remaining = sizes - heads
            eligible = (remaining > 0) & (sizes >= self.min_cluster_size)
            if not eligible.any():
                eligible = remaining > 0
            cand = np.flatnonzero(eligible)
            # Fewest covered first, then the largest cluster, then the lowest cluster id.
            c = int(cand[np.lexsort((cand, -sizes[cand], covered[cand]))[0]])
            picked[step] = queues[c][heads[c]]
            heads[c] += 1
            covered[c] += 1
        info = {"clusters": n_clusters, "kmeans_iterations": res.iterations}
        return Selection(picked, typ_N[picked], self.name, info)
