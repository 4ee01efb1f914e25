"""Uncertainty scores of the predictive distribution ``p(y | x) = mean_k p_k(y | x)``.

Plain functions of ``probs_N_K_C`` returning float64 ``[N]``; a higher score means a more
informative item. They work in row chunks (memory O(chunk) above the input), never write
into their input, and raise ``ValueError`` on NaN or infinite results. The values of the
probabilities (non-negative, summing to one) are checked once by ``PoolOutputs``; these
functions only check shapes, so they can be called on a validated pool chunk by chunk.

Reference for the family: B. Settles, "Active Learning Literature Survey", Computer
Sciences Technical Report 1648, University of Wisconsin-Madison, 2009, section 3.1.
"""

from __future__ import annotations

import numpy as np

from strategies._kernels import (
    check_probs_shape,
    chunks,
    finish,
    mean_over_k,
    neg_xlogx_rowsum,
    torch_threads,
)
from strategies._kernels import top2 as _top2


def mean_probs(probs_N_K_C: np.ndarray) -> np.ndarray:
    """The predictive distribution ``mean_k probs[n, k, :]``, float64 ``[N, C]``."""
    check_probs_shape(probs_N_K_C, "mean_probs")
    return np.asarray(probs_N_K_C.mean(axis=1, dtype=np.float64))


@torch_threads
def least_confidence(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """``1 - max_c p(c | x)``: how little the model believes its own top guess.

    Reference: D. D. Lewis and W. A. Gale, "A Sequential Algorithm for Training Text
    Classifiers", SIGIR 1994; A. Culotta and A. McCallum, "Reducing Labeling Effort for
    Structured Prediction Tasks", AAAI 2005.
    """
    check_probs_shape(probs_N_K_C, "least_confidence")
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        out[sl] = 1.0 - _top2(mean_over_k(chunk))[0]
    return finish(out, "least_confidence")


@torch_threads
def margin(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """``1 - (p_1 - p_2)``, one minus the gap between the two most probable classes.

    Stated as ``1 - margin`` so that higher = more informative and the score lies in
    ``[0, 1]`` (usable by power sampling). A tie at the top scores 1.

    Reference: T. Scheffer, C. Decomain and S. Wrobel, "Active Hidden Markov Models for
    Information Extraction", IDA 2001.
    """
    check_probs_shape(probs_N_K_C, "margin")
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        p1, p2 = _top2(mean_over_k(chunk))
        out[sl] = 1.0 - (p1 - p2)
    return finish(out, "margin")


@torch_threads
def ratio(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Ratio of confidences ``p_2 / p_1`` of the two most probable classes, in ``[0, 1]``.

    Reference: R. Monarch, "Human-in-the-Loop Machine Learning", Manning 2021, ch. 3
    ("ratio of confidence").
    """
    check_probs_shape(probs_N_K_C, "ratio")
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        p1, p2 = _top2(mean_over_k(chunk))
        p1_64 = p1.astype(np.float64)
        if (p1_64 <= 0).any():
            raise ValueError("ratio: a row has no positive probability; pass softmax outputs")
        out[sl] = p2 / p1_64
    return finish(out, "ratio")


@torch_threads
def entropy(probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Predictive entropy ``H[p(y | x)] = -sum_c p_c log p_c`` in nats.

    With K > 1 this is the entropy of the mean over samples ("max entropy" in Gal et al.).

    Reference: C. E. Shannon, "A Mathematical Theory of Communication", 1948; Settles
    2009, eq. 3.2; Y. Gal, R. Islam and Z. Ghahramani, "Deep Bayesian Active Learning
    with Image Data", ICML 2017.
    """
    check_probs_shape(probs_N_K_C, "entropy")
    out = np.empty(probs_N_K_C.shape[0], dtype=np.float64)
    for sl, chunk in chunks(probs_N_K_C, chunk_rows):
        out[sl] = neg_xlogx_rowsum(mean_over_k(chunk))
    return finish(out, "entropy")
