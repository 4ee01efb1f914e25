"""Small helpers shared by the strategies: ordering, chunking, argument checks.

Nothing here is public API; the strategies re-export what the connector needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from strategies.base import PoolOutputs, Selection

#: Elements of a probability array processed at once by the per-item scorers: 2**19
#: floats (2 MiB) amortise the fixed cost of each chunk (about 0.1 ms of dispatch) while
#: the temporaries stay a few MiB, whatever the pool size.
CHUNK_ELEMENTS = 1 << 19

#: Pool rows per block when a strategy computes distances against a set of centres:
#: a block of 4096 rows x 4096 centres in float32 is 64 MiB.
DIST_BLOCK = 4096


def clip_k(k: int, n: int) -> int:
    """``min(k, n)``; rejects a negative or non-integer ``k`` with a clear error."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(min(int(k), n))


def row_chunks(n: int, row_elements: int, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices of ``range(n)`` holding about ``chunk_elements`` elements each."""
    step = max(1, chunk_elements // max(1, row_elements))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def check_scores(scores_N: np.ndarray, where: str) -> np.ndarray:
    """Raise on NaN or infinite scores (never replace them); returns the array."""
    if scores_N.size and not np.isfinite(scores_N).all():
        bad = int(np.count_nonzero(~np.isfinite(scores_N)))
        raise ValueError(
            f"{where} produced {bad} NaN or infinite score(s); the model outputs are "
            "degenerate (check for NaN logits or probabilities outside [0, 1])"
        )
    return scores_N


def top_k_order(scores_N: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, ordered by ``(-score, index)``.

    Ties are broken by the lower index, so the result is deterministic. Runs in
    O(N + k log k) with a partition when ``k`` is small against ``N``.
    """
    scores_N = np.asarray(scores_N)
    n = scores_N.shape[0]
    k = clip_k(k, n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    check_scores(scores_N, "top_k_order")
    if 4 * k >= n:
        return np.argsort(-scores_N, kind="stable")[:k].astype(np.int64)
    # The k-th largest value; every item at least as large is a candidate (ties included,
    # in index order), so the stable sort below settles ties by index.
    threshold = np.partition(scores_N, n - k)[n - k]
    cand = np.flatnonzero(scores_N >= threshold)
    order = np.argsort(-scores_N[cand], kind="stable")[:k]
    return cand[order].astype(np.int64)


def empty_selection(name: str, info: Mapping[str, Any] | None = None) -> Selection:
    return Selection(
        np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64), name, dict(info or {})
    )


def select_top(
    name: str,
    score: Callable[[PoolOutputs], np.ndarray],
    outputs: PoolOutputs,
    k: int,
    rng: np.random.Generator,
) -> Selection:
    """The ``k`` items of the highest ``score(outputs)``, ties to the lower index."""
    check_rng(rng)
    k = clip_k(k, outputs.n)
    if k == 0:
        return empty_selection(name)
    scores = score(outputs)
    idx = top_k_order(scores, k)
    return Selection(idx, scores[idx], name, {"score": name})


def require_embeddings(outputs: PoolOutputs, name: str) -> np.ndarray:
    """``emb_N_D`` or a ValueError that names the strategy and the fix."""
    if outputs.emb_N_D is None:
        raise ValueError(
            f"strategy {name!r} needs embeddings: build PoolOutputs with emb_N_D "
            "(penultimate-layer features, one row per pool item)"
        )
    return outputs.emb_N_D


def check_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator or a seed; never the global random state."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError("pass rng=numpy.random.default_rng(seed); there is no global random state")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}"
    )


def sq_norms(x_N_D: np.ndarray) -> np.ndarray:
    """Squared row norms in float64, chunked (no N x D float64 temporary)."""
    out = np.empty(x_N_D.shape[0], dtype=np.float64)
    for sl in row_chunks(x_N_D.shape[0], x_N_D.shape[1]):
        blk = x_N_D[sl].astype(np.float64, copy=False)
        out[sl] = np.einsum("nd,nd->n", blk, blk)
    return out


def min_sq_dist_to(
    x_N_D: np.ndarray, x_sq_N: np.ndarray, centres_M_D: np.ndarray, block: int = DIST_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x_N_D``, the squared distance to its nearest centre and its index.

    Blocked over both the rows and the centres, so memory is O(block^2), never N x M.
    Distances come from ``|x|^2 + |c|^2 - 2 x.c`` with the product in the input dtype and
    the sum in float64, clamped at 0 against rounding.
    """
    n, m = x_N_D.shape[0], centres_M_D.shape[0]
    best = np.full(n, np.inf, dtype=np.float64)
    arg = np.zeros(n, dtype=np.int64)
    if m == 0:
        return best, arg
    c_sq = sq_norms(centres_M_D)
    dtype = np.result_type(x_N_D.dtype, centres_M_D.dtype)
    for c0 in range(0, m, block):
        c_blk = np.asarray(centres_M_D[c0 : c0 + block], dtype=dtype)
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            dots = x_N_D[r0:r1].astype(dtype, copy=False) @ c_blk.T
            d = x_sq_N[r0:r1, None] + c_sq[None, c0 : c0 + c_blk.shape[0]] - 2.0 * dots
            j = np.argmin(d, axis=1)
            dj = d[np.arange(r1 - r0), j]
            better = dj < best[r0:r1]
            best[r0:r1][better] = dj[better]
            arg[r0:r1][better] = j[better] + c0
    np.maximum(best, 0.0, out=best)
    return best, arg
