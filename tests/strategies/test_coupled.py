"""The selection side of the training-coupled strategies, and the aux arrays they read."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import PoolOutputs, get_strategy, trains

from .conftest import make_pool


def _pool(aux: dict[str, np.ndarray]) -> PoolOutputs:
    probs = np.array([[[0.5, 0.5]], [[0.9, 0.1]], [[0.99, 0.01]]], dtype=np.float64)
    return PoolOutputs(probs, aux=aux)


@pytest.mark.parametrize("name", ["loss_prediction", "vaal"])
def test_aux_score_orders_by_its_array(name: str) -> None:
    pool = _pool({name: np.array([0.1, 3.0, 2.0])})
    sel = get_strategy(name).select(pool, 3, np.random.default_rng(0))
    assert sel.indices.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(sel.scores, [3.0, 2.0, 0.1])


def test_waal_score_is_critic_bonus_minus_loss_bound() -> None:
    critic = np.array([0.2, 0.9, 0.5])
    pool = _pool({"waal": critic})
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01]])
    log_p = np.log(p)
    expected = 4.0 * critic - 0.5 * (-log_p.sum(1)) - 0.5 * np.sqrt((log_p**2).sum(1))
    strategy = get_strategy("waal", selection=4.0)
    np.testing.assert_allclose(strategy.score(pool), expected)  # type: ignore[attr-defined]


def test_waal_prefers_the_flat_prediction_when_the_critic_is_silent() -> None:
    pool = _pool({"waal": np.zeros(3)})
    sel = get_strategy("waal").select(pool, 1, np.random.default_rng(0))
    assert sel.indices.tolist() == [0]


def test_waal_critic_can_overrule_a_small_uncertainty_gap() -> None:
    # Items 0 and 1 differ little in uncertainty; the critic says item 1 looks unlabeled.
    probs = np.array([[[0.5, 0.5]], [[0.55, 0.45]]])
    pool = PoolOutputs(probs, aux={"waal": np.array([0.0, 1.0])})
    assert get_strategy("waal").select(pool, 1, 0).indices.tolist() == [1]  # type: ignore[arg-type]
    assert get_strategy("waal", selection=0.0).select(pool, 1, 0).indices.tolist() == [0]  # type: ignore[arg-type]


def test_waal_is_finite_when_a_probability_underflows_to_zero() -> None:
    probs = np.array([[[1.0, 0.0]], [[0.5, 0.5]]], dtype=np.float32)
    scores = get_strategy("waal").score(PoolOutputs(probs, aux={"waal": np.ones(2)}))  # type: ignore[attr-defined]
    assert np.isfinite(scores).all()
    assert scores[1] > scores[0]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "10", True])
def test_waal_rejects_a_bad_selection_weight(bad: object) -> None:
    with pytest.raises(ValueError, match="selection must be"):
        get_strategy("waal", selection=bad)


@pytest.mark.parametrize("name", ["loss_prediction", "vaal", "waal"])
def test_each_declares_what_it_trains(name: str) -> None:
    assert trains(get_strategy(name)) == name
    assert trains(get_strategy("margin")) is None


@pytest.mark.parametrize(
    ("aux", "message"),
    [
        ({"vaal": np.ones((3, 1))}, r"aux\['vaal'\] must be a 1-D"),
        ({"vaal": np.ones(4)}, "4 values but probs_N_K_C has 3 rows"),
        ({"vaal": np.array([0.1, np.nan, 0.2])}, "NaN or infinite"),
        ({"vaal": np.array([1, 2, 3])}, "floating point"),
    ],
)
def test_bad_aux_arrays_are_rejected(aux: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _pool(aux)


def test_subset_keeps_the_aux_rows() -> None:
    pool = make_pool(n=10, seed=2)
    sub = pool.subset(np.array([7, 2]))
    assert pool.aux is not None and sub.aux is not None
    for key, arr in pool.aux.items():
        np.testing.assert_array_equal(sub.aux[key], arr[[7, 2]])
