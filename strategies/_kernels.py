"""Chunked numeric kernels behind the per-item scorers.

Scorers walk the pool in row chunks that fit in cache, so memory above the input stays
O(chunk) and a million-item pool costs what reading it costs, not a large temporary.
Logarithms go through torch (vectorised; numpy's float32 log is several times slower on
AVX2 machines); everything else is numpy on the same buffers, zero copy.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that compute with it: importing the strategies (to
# name, validate or list them: `al-connector status`, `check`, a plan) costs no torch.

from strategies._common import CHUNK_ELEMENTS, check_scores, row_chunks

_F = TypeVar("_F", bound=Callable[..., Any])

#: torch intra-op threads while a strategy runs; None leaves the caller's setting alone.
_TORCH_THREADS: list[int | None] = [1]


def set_torch_threads(threads: int | None) -> None:
    """How many torch threads the scorers and BatchBALD use (default 1; None = caller's).

    One thread is the default because the work is cut into cache-sized chunks: on an idle
    machine two threads gain at most ~2x, but on cores shared with other jobs every
    parallel region waits for a descheduled thread, and we measured BatchBALD 37x and
    BALD 40x slower with 2 threads on 2 busy cores. The caller's setting is restored
    after each call.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    _TORCH_THREADS[0] = threads


def torch_threads(fn: _F) -> _F:
    """Run ``fn`` with the configured torch thread count, then restore the caller's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        want = _TORCH_THREADS[0]
        before = torch.get_num_threads()
        if want is None or want == before:
            return fn(*args, **kwargs)
        torch.set_num_threads(want)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper  # type: ignore[return-value]


def check_probs_shape(probs_N_K_C: np.ndarray, where: str) -> None:
    """Cheap structural check of a probability array (values are checked by PoolOutputs)."""
    if not isinstance(probs_N_K_C, np.ndarray):
        raise ValueError(f"{where}: probs_N_K_C must be a numpy array, got {type(probs_N_K_C)}")
    if probs_N_K_C.ndim != 3:
        raise ValueError(
            f"{where}: probs_N_K_C must have 3 dimensions [N, K, C], got shape "
            f"{probs_N_K_C.shape}; for a deterministic model use probs[:, None, :]"
        )
    if not np.issubdtype(probs_N_K_C.dtype, np.floating):
        raise ValueError(f"{where}: probs_N_K_C must be floating point, got {probs_N_K_C.dtype}")
    if probs_N_K_C.shape[1] < 1 or probs_N_K_C.shape[2] < 2:
        raise ValueError(f"{where}: probs_N_K_C needs K >= 1 and C >= 2, got {probs_N_K_C.shape}")


def chunks(
    probs_N_K_C: np.ndarray, chunk_rows: int | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, chunk)`` pairs; each chunk is C-contiguous float32 or float64 (a view if it can)."""
    n, k, c = probs_N_K_C.shape
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    slices = (
        row_chunks(n, k * c, CHUNK_ELEMENTS)
        if chunk_rows is None
        else (slice(s, min(n, s + chunk_rows)) for s in range(0, n, chunk_rows))
    )
    dtype = probs_N_K_C.dtype if probs_N_K_C.dtype in (np.float32, np.float64) else np.float32
    for sl in slices:
        yield sl, np.ascontiguousarray(probs_N_K_C[sl], dtype=dtype)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A zero-copy torch view of a numpy array (only ever read, never written)."""
    import torch

    with warnings.catch_warnings():
        # torch warns that a read-only numpy array is not writable; it is only read here.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def neg_xlogx_rowsum(p_n_L: np.ndarray) -> np.ndarray:
    """``-sum_l p log p`` for each row of a 2-D block, float64 ``[n]``; 0 log 0 = 0.

    The fast path takes ``log`` of the raw values; rows where a zero produced ``0 * -inf``
    are recomputed with the zero lifted to the smallest normal float (its term is then
    exactly 0 after the product). A negative or NaN input still gives NaN and +inf a
    non-finite sum, and the caller raises on it. Each row is reduced on its own, so the
    result does not depend on how the pool was chunked.
    """
    import torch

    t = as_tensor(p_n_L)
    buf = torch.log(t)
    buf.mul_(t)
    s = buf.sum(dim=1)
    bad = torch.isnan(s)
    if bool(bad.any()):
        sub = t[bad]
        # Only zeros are lifted: a negative value keeps its NaN log.
        lifted = torch.where(sub == 0, torch.finfo(sub.dtype).tiny, sub)
        fixed = lifted.log_().mul_(sub).sum(dim=1)
        s[bad] = fixed
    out: np.ndarray = s.numpy().astype(np.float64)
    np.negative(out, out=out)
    return out


def mean_over_k(chunk_n_K_C: np.ndarray) -> np.ndarray:
    """The predictive distribution ``mean_k p[n, k, :]`` of a chunk, ``[n, C]``."""
    if chunk_n_K_C.shape[1] == 1:
        return chunk_n_K_C[:, 0, :]
    # torch reduces over the middle axis with vector adds; numpy loops over C-long rows.
    out: np.ndarray = as_tensor(chunk_n_K_C).mean(dim=1).numpy()
    return out


def top2(p_n_C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second-largest value of each row (equal when the top is tied)."""
    n, c = p_n_C.shape
    if c > 16:
        part = np.partition(p_n_C, c - 2, axis=1)
        return part[:, c - 1].copy(), part[:, c - 2].copy()
    # A running (max, second max) over the columns: 3 vector ops per class, no sort.
    m1 = p_n_C[:, 0].copy()
    m2 = np.full(n, -np.inf, dtype=p_n_C.dtype)
    tmp = np.empty_like(m1)
    for j in range(1, c):
        col = p_n_C[:, j]
        np.minimum(m1, col, out=tmp)
        np.maximum(m2, tmp, out=m2)
        np.maximum(m1, col, out=m1)
    return m1, m2


def finish(scores_N: np.ndarray, where: str) -> np.ndarray:
    """Raise on NaN or infinite scores; returns float64 ``[N]``."""
    return check_scores(scores_N.astype(np.float64, copy=False), where)
