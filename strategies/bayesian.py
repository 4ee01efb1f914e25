"""Scores that read the disagreement between K stochastic passes or ensemble members.

Plain functions of ``probs_N_K_C`` returning float64 ``[N]`` (higher = more informative),
chunked over rows, never writing into their input; they raise ``ValueError`` on NaN or
infinite values. With K = 1 (a deterministic model) every score here is 0 for every item:
there is no disagreement to measure, use an uncertainty score instead.
"""

from __future__ import annotations

import numpy as np

from strategies._kernels import (
    as_tensor,
    check_probs_shape,
    chunks,
    finish,
    mean_over_k,
    neg_xlogx_rowsum,
    torch_threads,
)


def _require_finite(chunk: np.ndarray, where: str) -> None:
    # argmax-based scores would hide a NaN (argmax returns its index), so check explicitly.
    if not np.isfinite(chunk).all():
        raise ValueError(f"{where}: probs_N_K_C contains NaN or infinite values")


@torch_threads
def bald(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """BALD, the mutual information between the label and the model parameters.

    ``I[y; w | x] = H[mean_k p_k] - mean_k H[p_k]`` in nats, in ``[0, log C]``; clipped
    at 0 against rounding (it is non-negative by Jensen's inequality).

    References: N. Houlsby, F. Huszar, Z. Ghahramani and M. Lengyel, "Bayesian Active
    Learning for Classification and Preference Learning", arXiv:1112.5745, 2011; Y. Gal,
    R. Islam and Z. Ghahramani, "Deep Bayesian Active Learning with Image Data", ICML 2017.
    """
    check_probs_shape(probs_N_K_C, "bald")
    n_all, k, c = probs_N_K_C.shape
    out = np.empty(n_all, dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        n = chunk.shape[0]
        expected = neg_xlogx_rowsum(chunk.reshape(n, k * c))
        expected /= k
        out[sl] = neg_xlogx_rowsum(mean_over_k(chunk)) - expected
    np.maximum(out, 0.0, out=out)  # NaN survives np.maximum and is raised by finish()
    return finish(out, "bald")


@torch_threads
def variation_ratios(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """``1 - f_mode / K``: the share of passes that do not vote for the modal class.

    Each pass votes for its argmax (ties go to the lowest class index).

    References: L. C. Freeman, "Elementary Applied Statistics", Wiley 1965; Gal, Islam
    and Ghahramani, ICML 2017.
    """
    check_probs_shape(probs_N_K_C, "variation_ratios")
    k = probs_N_K_C.shape[1]
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        _require_finite(chunk, "variation_ratios")
        out[sl] = 1.0 - _vote_counts(chunk).max(axis=1) / k
    return finish(out, "variation_ratios")


@torch_threads
def mean_std(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Mean over classes of the standard deviation of ``p_k(c | x)`` over the K passes.

    Reference: M. Kampffmeyer, A.-B. Salberg and R. Jenssen, "Semantic Segmentation of
    Small Objects and Modeling of Uncertainty in Urban Remote Sensing Images Using Deep
    Convolutional Neural Networks", CVPR Workshops 2016.
    """
    check_probs_shape(probs_N_K_C, "mean_std")
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        t = as_tensor(chunk)
        # Two passes (deviations from the mean), not E[p^2] - E[p]^2: no cancellation.
        dev = t - t.mean(dim=1, keepdim=True)
        out[sl] = dev.mul_(dev).mean(dim=1).sqrt_().mean(dim=1).numpy()
    return finish(out, "mean_std")


@torch_threads
def vote_entropy(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Entropy of the committee's hard votes, ``-sum_c (V_c / K) log (V_c / K)``, in nats.

    Each member (or MC pass) votes for its argmax (ties go to the lowest class index).

    Reference: I. Dagan and S. P. Engelson, "Committee-Based Sampling for Training
    Probabilistic Classifiers", ICML 1995.
    """
    check_probs_shape(probs_N_K_C, "vote_entropy")
    k = probs_N_K_C.shape[1]
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        _require_finite(chunk, "vote_entropy")
        out[sl] = neg_xlogx_rowsum(_vote_counts(chunk) / k)
    return finish(out, "vote_entropy")


@torch_threads
def kl_to_consensus(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Query-by-committee "KL divergence to the mean": ``mean_k KL(p_k || mean_j p_j)``.

    Computed member by member from the divergences. It equals BALD mathematically (the
    average divergence to the mixture is the mixture's Jensen-Shannon information); the
    test suite checks the two computations against each other.

    Reference: A. McCallum and K. Nigam, "Employing EM and Pool-Based Active Learning for
    Text Classification", ICML 1998.
    """
    check_probs_shape(probs_N_K_C, "kl_to_consensus")
    n_all, k, c = probs_N_K_C.shape
    out = np.empty(n_all, dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        t = as_tensor(chunk)
        tiny = float(np.finfo(chunk.dtype).tiny)
        # Zeros lifted to the smallest normal float: their terms vanish (tiny * finite),
        # and p_k(c) = 0 whenever the consensus is 0, so no 0 * log 0 is left.
        log_p = t.clamp_min(tiny).log_()
        log_mean = t.mean(dim=1).clamp_min_(tiny).log_()
        log_p.sub_(log_mean[:, None, :]).mul_(t)
        out[sl] = log_p.reshape(t.shape[0], k * c).sum(dim=1).numpy() / k
    np.maximum(out, 0.0, out=out)
    return finish(out, "kl_to_consensus")


def _vote_counts(chunk_n_K_C: np.ndarray) -> np.ndarray:
    """``[n, C]`` number of passes whose argmax is each class."""
    n, _, c = chunk_n_K_C.shape
    votes_n_K = as_tensor(chunk_n_K_C).argmax(dim=2).numpy()
    flat = (np.arange(n)[:, None] * c + votes_n_K).ravel()
    return np.bincount(flat, minlength=n * c).reshape(n, c).astype(np.float64)
