"""Distance from every pool item to its nearest centre, as centres are added one by one.

Farthest-first traversal (core-set) and k-means++ seeding (BADGE, k-means) both keep,
for every item, the squared distance to the nearest centre so far, and update it with
one new centre per step. A plain update reads all N x D features per step. Here the
triangle inequality skips the items that provably keep their nearest centre: if item n's
nearest centre is a, at distance d_n, and the new centre c has ``|a - c| >= 2 d_n``, then
``|n - c| >= |a - c| - d_n >= d_n``. Only the other rows are gathered and recomputed, so
a step costs O(N) plus O(D) per row that may change. With the items' norms, the reverse
triangle inequality ``|n - c| >= | |n| - |c| |`` prunes too. The result is exact, not an
approximation (up to float rounding at exact ties of the bound).

Reference: C. Elkan, "Using the Triangle Inequality to Accelerate k-Means", ICML 2003.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Above this share of rows to recompute, one pass over all rows beats gathering them.
_DENSE_SHARE = 0.35

#: ``(rows, j) -> squared distances`` from items ``rows`` (None = all) to item j.
ItemDists = Callable[[np.ndarray | None, int], np.ndarray]
#: ``j -> squared distances`` from item j to every centre so far, in centre order.
CentreDists = Callable[[int], np.ndarray]


class NearestCentre:
    """``min_d`` (float64 ``[N]``, squared) and ``assign`` (nearest centre id, ``[N]``)."""

    def __init__(
        self,
        n: int,
        item_dists: ItemDists,
        centre_dists: CentreDists,
        norms_N: np.ndarray | None = None,
    ) -> None:
        self.norms_N = norms_N
        self.min_d = np.full(n, np.inf)
        self.assign = np.zeros(n, dtype=np.int64)
        self.n_centres = 0
        self.rows_computed = 0
        self._item_dists = item_dists
        self._centre_dists = centre_dists

    def seed(self, min_d: np.ndarray, assign: np.ndarray, n_centres: int) -> None:
        """Start from centres that are not pool items (the labeled set)."""
        self.min_d = min_d.astype(np.float64, copy=True)
        self.assign = assign.astype(np.int64, copy=True)
        self.n_centres = n_centres

    def add(self, j: int) -> None:
        """Add pool item ``j`` as the next centre (its id is the current ``n_centres``)."""
        n = self.min_d.shape[0]
        new_id = self.n_centres
        if new_id == 0:
            self.min_d = self._item_dists(None, j).astype(np.float64, copy=True)
            self.assign[:] = 0
            self.rows_computed += n
        else:
            dc = np.sqrt(np.maximum(self._centre_dists(j), 0.0))
            # Items whose nearest centre is at least 2 d_n from the new one cannot move.
            # The slack keeps rounding in the distances from pruning a genuine tie.
            radius = np.sqrt(self.min_d) * (1.0 + 1e-6) + 1e-12
            need = dc[self.assign] <= 2.0 * radius
            if self.norms_N is not None:
                # And |n - c| >= | |n| - |c| |: far from the new centre's sphere, no change.
                need &= np.abs(self.norms_N - self.norms_N[j]) <= radius
            rows = np.flatnonzero(need)
            if rows.size > _DENSE_SHARE * n:
                d = self._item_dists(None, j)
                better = np.flatnonzero(d < self.min_d)
                self.min_d[better] = d[better]
                self.assign[better] = new_id
                self.rows_computed += n
            elif rows.size:
                d = self._item_dists(rows, j)
                closer = d < self.min_d[rows]
                self.min_d[rows[closer]] = d[closer]
                self.assign[rows[closer]] = new_id
                self.rows_computed += rows.size
        self.min_d[j] = 0.0
        self.assign[j] = new_id
        self.n_centres = new_id + 1


def euclidean_item_dists(x_N_D: np.ndarray, sq_N: np.ndarray) -> ItemDists:
    """Squared Euclidean distances ``|x|^2 + |x_j|^2 - 2 x.x_j``, float64, clamped at 0."""

    def dists(rows: np.ndarray | None, j: int) -> np.ndarray:
        xj = x_N_D[j]
        if rows is None:
            out = np.multiply(x_N_D @ xj, -2.0, dtype=np.float64)
            out += sq_N
        else:
            out = np.multiply(x_N_D[rows] @ xj, -2.0, dtype=np.float64)
            out += sq_N[rows]
        out += sq_N[j]
        np.maximum(out, 0.0, out=out)
        return out

    return dists
