"""Core-set selection: greedy k-center on the embeddings, seeded with the labeled set.

Each step adds the pool item farthest from every labeled item and every item chosen so
far, which is the 2-approximation of the k-center problem the paper uses to cover the
pool with balls of the smallest radius. One vector ``[N]`` of distances to the nearest
centre is kept and updated with one new centre per step: at most O(N * D) time per step
(much less once the triangle inequality prunes the items a new centre cannot reach, see
``strategies._nearest``), O(N) memory above the input, never an N x N matrix. Labeled
embeddings initialise it in blocks (O(block^2) memory).

Reference: O. Sener and S. Savarese, "Active Learning for Convolutional Neural Networks:
A Core-Set Approach", ICLR 2018 (arXiv:1708.00489); T. F. Gonzalez, "Clustering to
Minimize the Maximum Intercluster Distance", Theoretical Computer Science 38, 1985.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from strategies._common import (
    check_rng,
    clip_k,
    empty_selection,
    min_sq_dist_to,
    require_embeddings,
    sq_norms,
)
from strategies._nearest import NearestCentre, euclidean_item_dists
from strategies.base import PoolOutputs, Selection


def distance_to_labeled(outputs: PoolOutputs) -> np.ndarray:
    """Euclidean distance from every pool item to its nearest labeled item, float64 ``[N]``.

    The quantity core-set maximises at its first step; needs ``emb_N_D`` and a non-empty
    ``labeled_emb_M_D``.
    """
    emb = require_embeddings(outputs, "coreset")
    if outputs.labeled_emb_M_D is None or outputs.labeled_emb_M_D.shape[0] == 0:
        raise ValueError("distance_to_labeled needs labeled_emb_M_D with at least one row")
    d, _ = min_sq_dist_to(emb, sq_norms(emb), outputs.labeled_emb_M_D)
    return np.sqrt(d)


class CoreSet:
    """Greedy k-center (farthest-first traversal) on ``emb_N_D`` (Sener & Savarese 2018).

    Without labeled embeddings the first centre is drawn uniformly with ``rng`` and its
    score is its distance to the pool mean. ``Selection.scores`` holds, for every other
    pick, its Euclidean distance to the nearest centre (labeled or chosen) when it was
    picked: the covering radius, non-increasing along the selection.
    """

    name = "coreset"
    needs_embeddings = True

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        emb = require_embeddings(outputs, self.name)
        n = emb.shape[0]
        k = clip_k(k, n)
        labeled = outputs.labeled_emb_M_D
        n_labeled = 0 if labeled is None else int(labeled.shape[0])
        info: dict[str, Any] = {"labeled": n_labeled}
        if k == 0:
            return empty_selection(self.name, info)
        sq_N = sq_norms(emb)
        dtype = emb.dtype if labeled is None else np.result_type(emb.dtype, labeled.dtype)
        # Centre vectors, labeled first: the pruning needs centre-to-centre distances.
        cvec = np.empty((n_labeled + k, emb.shape[1]), dtype=dtype)
        csq = np.empty(n_labeled + k, dtype=np.float64)

        def centre_dists(j: int) -> np.ndarray:
            nc = tracker.n_centres
            out: np.ndarray = csq[:nc] + sq_N[j] - 2.0 * (cvec[:nc] @ emb[j].astype(dtype))
            return out

        tracker = NearestCentre(n, euclidean_item_dists(emb, sq_N), centre_dists, np.sqrt(sq_N))
        if labeled is not None and n_labeled > 0:
            cvec[:n_labeled] = labeled
            csq[:n_labeled] = sq_norms(labeled)
            min_d, arg = min_sq_dist_to(emb, sq_N, labeled)
            tracker.seed(min_d, arg, n_labeled)
        picked = np.empty(k, dtype=np.int64)
        scores = np.empty(k, dtype=np.float64)
        alive = np.ones(n, dtype=bool)
        for step in range(k):
            if tracker.n_centres == 0:
                j = int(rng.integers(n))
                mean = emb.mean(axis=0, dtype=np.float64)
                score = float(np.linalg.norm(emb[j].astype(np.float64) - mean))
            else:
                j = int(np.argmax(tracker.min_d))  # first maximum: ties go to the lower index
                if not alive[j]:  # every item left coincides with a centre
                    j = int(np.flatnonzero(alive)[0])
                score = float(np.sqrt(max(tracker.min_d[j], 0.0)))
            picked[step], scores[step] = j, score
            alive[j] = False
            if step + 1 < k:
                nc = tracker.n_centres
                tracker.add(j)
                cvec[nc], csq[nc] = emb[j], sq_N[j]
        info["rows_computed_per_step"] = round(tracker.rows_computed / max(1, k - 1), 1)
        return Selection(picked, scores, self.name, info)
