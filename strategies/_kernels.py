"""Chunked numeric kernels behind the per-item scorers.

Scorers walk the pool in row chunks that fit in cache, so memory above the input stays
O(chunk) and a million-item pool costs what reading it costs, not a large temporary.
``-sum p log p`` over float32 rows, and BALD, run in the compiled kernels of
``strategies._xlogx`` (one pass over each item's block, a vectorised Cephes log) when the
install built them; otherwise, and for float64 input, logarithms go through torch
(vectorised; numpy's float32 log is several times slower on AVX2 machines). Everything
else is numpy on the same buffers, zero copy.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from strategies._common import CHUNK_ELEMENTS, check_scores, row_chunks

_xlogx: Any
try:
    from strategies import _xlogx  # built by setup.py when a C compiler is present
except ImportError:  # pragma: no cover - depends on the install
    _xlogx = None

#: Whether the compiled kernels are used when they are built (tests switch it off to run
#: the torch fallback on the same inputs).
_USE_COMPILED = [True]


def use_compiled_kernels(enabled: bool) -> None:
    """Use the compiled ``-sum p log p`` kernels when built (default), or always torch."""
    _USE_COMPILED[0] = bool(enabled)


def _active_kernels() -> Any:
    """The compiled module if it is built and switched on, else None."""
    return _xlogx if _USE_COMPILED[0] else None


def compiled_kernels() -> str | None:
    """The instruction set of the compiled kernels in use ("avx2+fma", "baseline"), or
    None when the scorers use torch (not built, switched off)."""
    kernels = _active_kernels()
    if kernels is None:
        return None
    variant: str = kernels.variant()
    return variant


def _compiled_for(a: np.ndarray) -> Any:
    """The compiled module when it applies to ``a`` (float32, C-contiguous), else None."""
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        return None
    return _active_kernels()


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
    with warnings.catch_warnings():
        # torch warns that a read-only numpy array is not writable; it is only read here.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def neg_xlogx_rowsum(p_n_L: np.ndarray) -> np.ndarray:
    """``-sum_l p log p`` for each row of a 2-D block, float64 ``[n]``; 0 log 0 = 0.

    The fast path takes ``log`` of the raw values; rows where a zero produced ``0 * -inf``
    are recomputed with the zero lifted to the smallest normal float (its term is then
    exactly 0 after the product). NaN or infinite inputs still give NaN, and the caller
    raises on it. Each row is reduced on its own, so the result does not depend on how
    the pool was chunked.
    """
    n, length = p_n_L.shape
    kernel = _compiled_for(p_n_L)
    if kernel is not None and length > 0:
        rows = np.empty(n, dtype=np.float64)
        kernel.neg_xlogx_rows(p_n_L, rows, n, length)
        return rows
    t = as_tensor(p_n_L)
    buf = torch.log(t)
    buf.mul_(t)
    s = buf.sum(dim=1)
    bad = torch.isnan(s)
    if bool(bad.any()):
        sub = t[bad]
        fixed = sub.clamp_min(torch.finfo(sub.dtype).tiny).log_().mul_(sub).sum(dim=1)
        s[bad] = fixed
    out: np.ndarray = s.numpy().astype(np.float64)
    np.negative(out, out=out)
    return out


def bald_rows(chunk_n_K_C: np.ndarray) -> np.ndarray | None:
    """BALD of each row of a float32 chunk by the compiled kernel (unclipped; NaN where a
    value is negative or NaN), or None when the kernel does not apply."""
    kernel = _compiled_for(chunk_n_K_C)
    if kernel is None:
        return None
    n, k, c = chunk_n_K_C.shape
    out = np.empty(n, dtype=np.float64)
    kernel.bald(chunk_n_K_C, out, n, k, c)
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
