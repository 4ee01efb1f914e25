"""Per-item scores against hand-computed and closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strategies import (
    SCORERS,
    bald,
    entropy,
    kl_to_consensus,
    least_confidence,
    margin,
    mean_std,
    ratio,
    variation_ratios,
    vote_entropy,
)
from strategies._common import top_k_order

from .conftest import make_pool


def _k1(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)[:, None, :]


def test_uncertainty_scores_on_hand_examples() -> None:
    p = _k1([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(least_confidence(p), [0.3, 0.6, 0.0, 2 / 3])
    np.testing.assert_allclose(margin(p), [1 - 0.5, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(ratio(p), [0.2 / 0.7, 1.0, 0.0, 1.0])
    h = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))]
    h += [-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)), 0.0, math.log(3)]
    np.testing.assert_allclose(entropy(p), h, rtol=1e-12)


def test_uncertainty_scores_average_over_passes() -> None:
    p = np.array([[[0.9, 0.1], [0.3, 0.7]]])  # mean (0.6, 0.4)
    np.testing.assert_allclose(least_confidence(p), [0.4])
    np.testing.assert_allclose(margin(p), [0.8])
    np.testing.assert_allclose(entropy(p), [-(0.6 * math.log(0.6) + 0.4 * math.log(0.4))])


@pytest.mark.parametrize("c", [3, 40])  # the running top-2 and the partition paths
def test_top2_paths_agree_with_sorting(c: int) -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(c), size=(50, 1))
    s = np.sort(p[:, 0, :], axis=1)
    np.testing.assert_allclose(margin(p), 1 - (s[:, -1] - s[:, -2]))
    np.testing.assert_allclose(ratio(p), s[:, -2] / s[:, -1])


def test_bald_closed_form() -> None:
    # Two confident members that disagree: H[mean] = log 2, each H = 0, so BALD = log 2.
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    # Identical members: no disagreement, BALD = 0 whatever their entropy.
    agree = np.array([[[0.3, 0.7], [0.3, 0.7]]])
    # Members (a, 1-a) and (b, 1-b): BALD = h((a+b)/2) - (h(a) + h(b))/2.
    a, b = 0.9, 0.2

    def h(x: float) -> float:
        return -(x * math.log(x) + (1 - x) * math.log(1 - x))

    mixed = np.array([[[a, 1 - a], [b, 1 - b]]])
    np.testing.assert_allclose(bald(disagree), [math.log(2)], rtol=1e-12)
    np.testing.assert_allclose(bald(agree), [0.0], atol=1e-15)
    np.testing.assert_allclose(bald(mixed), [h((a + b) / 2) - (h(a) + h(b)) / 2], rtol=1e-12)


def test_bald_is_zero_for_a_deterministic_model() -> None:
    p = make_pool(k=1).probs_N_K_C
    np.testing.assert_array_equal(bald(p), np.zeros(p.shape[0]))


def test_kl_to_consensus_equals_bald() -> None:
    p = make_pool(n=200, k=7, c=5, seed=3, dtype=np.float64).probs_N_K_C
    np.testing.assert_allclose(kl_to_consensus(p), bald(p), rtol=1e-9, atol=1e-12)


def test_committee_scores_on_hand_examples() -> None:
    # Votes: class 0, 0, 1, 2 -> mode share 1/2; vote entropy of (1/2, 1/4, 1/4).
    p = np.array(
        [[[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]], dtype=np.float64
    )
    np.testing.assert_allclose(variation_ratios(p), [0.5])
    np.testing.assert_allclose(vote_entropy(p), [-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))])
    np.testing.assert_allclose(mean_std(p), [p[0].std(axis=0).mean()])
    unanimous = np.tile(p[:, :1], (1, 4, 1))
    np.testing.assert_allclose(variation_ratios(unanimous), [0.0])
    np.testing.assert_allclose(vote_entropy(unanimous), [0.0], atol=0)


def test_zero_probabilities_are_zero_log_zero() -> None:
    p = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=np.float32)
    for name, fn in SCORERS.items():
        assert np.isfinite(fn(p)).all(), name
    np.testing.assert_allclose(entropy(p), [math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(bald(p), [math.log(2)], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_chunk_rows_do_not_change_scores(name: str) -> None:
    p = make_pool(n=131, k=6, c=5, seed=8).probs_N_K_C
    fn = SCORERS[name]
    whole = fn(p)
    for rows in (1, 7, 64, 1000):
        np.testing.assert_array_equal(fn(p, chunk_rows=rows), whole)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_raise_on_nan_rather_than_replace(name: str) -> None:
    p = make_pool(n=20, k=3).probs_N_K_C.copy()
    p[4, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        SCORERS[name](p)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_check_ranks(name: str) -> None:
    with pytest.raises(ValueError, match=r"3 dimensions \[N, K, C\]"):
        SCORERS[name](np.full((4, 3), 1 / 3))


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_do_not_write_into_their_input(name: str) -> None:
    p = make_pool(n=30, k=4).probs_N_K_C.copy()
    before = p.copy()
    p.flags.writeable = False
    SCORERS[name](p)
    np.testing.assert_array_equal(p, before)


def test_higher_means_more_uncertain() -> None:
    confident = [[0.98, 0.01, 0.01]]
    unsure = [[0.4, 0.35, 0.25]]
    p = _k1(confident + unsure)
    for fn in (least_confidence, margin, ratio, entropy):
        s = fn(p)
        assert s[1] > s[0], fn.__name__


def test_top_k_order_breaks_ties_by_index_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=1000).astype(np.float64)  # many ties
    reference = np.lexsort((np.arange(1000), -scores))
    for k in (1, 10, 249, 250, 1000):  # partition path below N/4, full sort above
        np.testing.assert_array_equal(top_k_order(scores, k), reference[:k])


def test_top_k_order_raises_on_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k_order(np.array([0.1, np.nan, 0.3]), 2)
