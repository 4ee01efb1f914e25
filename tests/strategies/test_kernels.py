"""The ``-sum p log p`` row kernel (torch) and BALD against float64 references.

Accuracy on float32 rows of every short length and across the whole float32 range, the
edge values (``0 log 0 = 0``; a negative or NaN value gives NaN and the scorer raises),
float64 and non-contiguous input, and chunking that does not change a result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from strategies import bald, entropy
from strategies._kernels import neg_xlogx_rowsum

from .conftest import softmax


def _neg_xlogx_f64(p: np.ndarray) -> np.ndarray:
    x = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)
    out: np.ndarray = -terms.sum(axis=-1)
    return out


def _bald_f64(p: np.ndarray) -> np.ndarray:
    x = p.astype(np.float64)
    return _neg_xlogx_f64(x.mean(axis=1)) - _neg_xlogx_f64(x).mean(axis=1)


@pytest.mark.parametrize("length", [*range(1, 18), 33, 200])
def test_rows_match_float64(length: int) -> None:
    rng = np.random.default_rng(length)
    p = rng.dirichlet(np.full(length, 0.3), size=64).astype(np.float32)
    p[::7, 0] = 0.0  # exact zeros: 0 log 0 = 0
    np.testing.assert_allclose(neg_xlogx_rowsum(p), _neg_xlogx_f64(p), rtol=2e-6, atol=2e-7)


def test_rows_are_accurate_across_the_whole_float32_range() -> None:
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(1e-37), 0.0, size=80_000)).astype(np.float32)
    got = neg_xlogx_rowsum(x[:, None])  # one value per row: -x log x itself
    ref = _neg_xlogx_f64(x[:, None])
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 5e-7


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, 0.0),
        (-0.0, 0.0),
        (1e-42, 0.0),  # subnormal: its term is below 1e-40
        (1.0, 0.0),
        (0.5, 0.5 * np.log(2.0)),
        (-1e-3, np.nan),
        (np.nan, np.nan),
    ],
)
def test_edge_values(value: float, expected: float) -> None:
    row = np.array([[value, 0.25, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    got = neg_xlogx_rowsum(row)
    rest = _neg_xlogx_f64(row[:, 1:])[0]
    if np.isnan(expected):
        assert np.isnan(got[0])
    else:
        assert got[0] == pytest.approx(expected + rest, abs=1e-6)


def test_infinity_gives_a_non_finite_sum() -> None:
    for row in ([np.inf, 0.5], [np.inf, 0.0]):
        assert not np.isfinite(neg_xlogx_rowsum(np.array([row], dtype=np.float32))[0])


@pytest.mark.parametrize(("k", "c"), [(1, 2), (2, 3), (3, 7), (5, 8), (20, 10), (4, 17), (7, 33)])
def test_bald_matches_float64(k: int, c: int) -> None:
    rng = np.random.default_rng(k * 100 + c)
    p = softmax(rng.normal(0, 2, size=(50, k, c))).astype(np.float32)
    p[0] = p[0, :1]  # members that agree: BALD is 0
    got = bald(p)
    np.testing.assert_allclose(got, _bald_f64(p), atol=2e-6)
    assert abs(got[0]) < 2e-6


@pytest.mark.parametrize("scorer", [bald, entropy])
def test_a_negative_or_nan_probability_raises(scorer: Callable[..., np.ndarray]) -> None:
    for bad in (-0.1, np.nan):
        p = np.full((3, 4, 10), 0.1, dtype=np.float32)
        p[1, :, 3] = bad  # in every pass, so that the mean over K is bad too
        with pytest.raises(ValueError, match="NaN or infinite"):
            scorer(p)


def test_scorers_match_float64_and_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(3)
    p = softmax(rng.normal(0, 2, size=(3000, 20, 10))).astype(np.float32)
    np.testing.assert_allclose(bald(p), _bald_f64(p), atol=2e-6)
    np.testing.assert_allclose(
        entropy(p), _neg_xlogx_f64(p.astype(np.float64).mean(axis=1)), atol=2e-6
    )
    np.testing.assert_array_equal(bald(p, chunk_rows=7), bald(p))
    np.testing.assert_array_equal(entropy(p, chunk_rows=7), entropy(p))


def test_non_contiguous_and_float64_input() -> None:
    p = softmax(np.random.default_rng(1).normal(size=(40, 12))).astype(np.float32)
    strided = p[:, ::2]
    np.testing.assert_allclose(
        neg_xlogx_rowsum(strided), _neg_xlogx_f64(strided), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        neg_xlogx_rowsum(p.astype(np.float64)), _neg_xlogx_f64(p), rtol=1e-12, atol=1e-12
    )
