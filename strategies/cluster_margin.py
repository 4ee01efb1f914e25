"""Cluster-margin: the most uncertain items first, then spread over clusters of them.

Take the ``M = candidates_per_item * k`` items with the highest base score (margin by
default), cluster their embeddings, and fill the batch round-robin over the clusters,
smallest cluster first, taking each cluster's highest-scoring remaining item. Small
clusters go first because they hold the rare, otherwise under-sampled, kinds of
uncertain items.

Differences from the paper, on purpose: it clusters the whole pool once with
average-linkage agglomerative clustering (O(N^2) memory); here k-means clusters only the
top-M candidates (O(M * D) memory), and within a cluster the most uncertain item is
taken rather than a random one, so the result is deterministic given ``rng``.

Reference: G. Citovsky, G. DeSalvo, C. Gentile, L. Karydas, A. Rajagopalan,
A. Rostamizadeh and S. Kumar, "Batch Active Learning at Scale", NeurIPS 2021
(arXiv:2107.14263).
"""

from __future__ import annotations

import numpy as np

from strategies._common import check_rng, clip_k, empty_selection, require_embeddings, top_k_order
from strategies.base import PoolOutputs, Selection
from strategies.kmeans import kmeans
from strategies.scoring import check_chunk_rows, scorer


class ClusterMargin:
    """Top-M by a per-item score, then round-robin over k-means clusters of those M.

    Parameters:
        base: the per-item score (default ``margin``, as in the paper).
        candidates_per_item: M = this many candidates per item asked for (paper: 10).
        n_clusters: clusters of the candidates; default k (one item per cluster when
            they are balanced).
        max_iter: Lloyd iterations of k-means.
    """

    name = "cluster_margin"
    needs_embeddings = True

    def __init__(
        self,
        *,
        base: str = "margin",
        candidates_per_item: int = 10,
        n_clusters: int | None = None,
        max_iter: int = 20,
        chunk_rows: int | None = None,
    ) -> None:
        self.base = base
        self._fn = scorer(base)
        for pname, value in (("candidates_per_item", candidates_per_item), ("max_iter", max_iter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{pname} must be a positive integer, got {value!r}")
        if n_clusters is not None and (
            isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1
        ):
            raise ValueError(f"n_clusters must be a positive integer or None, got {n_clusters!r}")
        self.candidates_per_item = candidates_per_item
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.chunk_rows = check_chunk_rows(chunk_rows)

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """The base score of every item, float64 ``[N]``."""
        return self._fn(outputs.probs_N_K_C, chunk_rows=self.chunk_rows)

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        emb = require_embeddings(outputs, self.name)
        n = emb.shape[0]
        k = clip_k(k, n)
        if k == 0:
            return empty_selection(self.name, {"base": self.base})
        scores = self.score(outputs)
        m = min(n, self.candidates_per_item * k)
        cand = top_k_order(scores, m)  # by score, ties by index
        n_clusters = min(m, self.n_clusters if self.n_clusters is not None else k)
        res = kmeans(emb[cand], n_clusters, rng, max_iter=self.max_iter)
        sizes = np.bincount(res.labels_N, minlength=n_clusters)
        # Clusters smallest first (ties: lower id); members keep the score order of `cand`.
        cluster_order = np.lexsort((np.arange(n_clusters), sizes))
        rank_of = np.empty(n_clusters, dtype=np.int64)
        rank_of[cluster_order] = np.arange(n_clusters)
        # Position of each candidate inside its cluster's queue (0 = best score).
        by_cluster = np.argsort(res.labels_N, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        within = np.empty(m, dtype=np.int64)
        within[by_cluster] = np.arange(m) - starts[res.labels_N[by_cluster]]
        # Round r takes the r-th item of every cluster that still has one, in cluster order.
        take = np.lexsort((rank_of[res.labels_N], within))[:k]
        idx = cand[take]
        info = {"base": self.base, "candidates": int(m), "clusters": int(n_clusters)}
        return Selection(idx.astype(np.int64), scores[idx], self.name, info)
