"""The contract every registered strategy honours, parametrised over the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from strategies import (
    ItemScorer,
    PoolOutputs,
    Selection,
    available,
    get_strategy,
    item_scores,
    trains,
)

ALL = available()
NEEDS_EMB = [name for name in ALL if get_strategy(name).needs_embeddings]
SCORING = [name for name in ALL if isinstance(get_strategy(name), ItemScorer)]
COUPLED = [name for name in ALL if trains(get_strategy(name)) is not None]
#: Strategies whose choice among identical items must be the index order.
INDEX_ORDER_ON_TIES = [
    name
    for name in ALL
    if name not in {"random", "power", "softmax", "softrank", "kmeans"}
    and name not in {"typiclust", "cluster_margin"}
]


def _select(name: str, outputs: PoolOutputs, k: int, seed: int = 0) -> Selection:
    return get_strategy(name).select(outputs, k, np.random.default_rng(seed))


def _check_selection(sel: Selection, name: str, n: int, k: int) -> None:
    assert isinstance(sel, Selection)
    assert sel.strategy == name
    assert sel.indices.dtype == np.int64
    assert sel.scores.dtype == np.float64
    assert sel.indices.shape == sel.scores.shape == (min(k, n),)
    assert len(set(sel.indices.tolist())) == sel.indices.shape[0], "indices must be unique"
    if sel.indices.size:
        assert sel.indices.min() >= 0
        assert sel.indices.max() < n
    assert np.isfinite(sel.scores).all()


def test_registry_is_complete() -> None:
    expected = {
        "random", "least_confidence", "margin", "ratio", "entropy", "bald",
        "variation_ratios", "mean_std", "vote_entropy", "kl_to_consensus", "batchbald",
        "power", "softmax", "softrank", "cluster_margin", "coreset", "badge", "kmeans",
        "typiclust", "loss_prediction", "vaal", "waal",
    }  # fmt: skip
    assert set(ALL) == expected


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("k", [0, 1, 7, 60, 65])
def test_shapes_and_order(name: str, k: int, pool: PoolOutputs) -> None:
    sel = _select(name, pool, k)
    _check_selection(sel, name, pool.n, k)
    if k >= pool.n:
        assert sorted(sel.indices.tolist()) == list(range(pool.n)), "k >= N returns the pool"


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seed(name: str, pool: PoolOutputs) -> None:
    a = _select(name, pool, 9, seed=3)
    np.random.seed(12345)  # noqa: NPY002 -- the global random state must play no part
    b = _select(name, pool, 9, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("name", ALL)
def test_seed_argument_equals_generator(name: str, pool: PoolOutputs) -> None:
    a = get_strategy(name).select(pool, 5, np.random.default_rng(7))
    b = get_strategy(name).select(pool, 5, 7)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_never_modified(name: str, pool_factory: Callable[..., PoolOutputs]) -> None:
    outputs = pool_factory(seed=4)
    copies = {f.name: np.copy(getattr(outputs, f.name)) for f in dataclasses.fields(outputs)
              if isinstance(getattr(outputs, f.name), np.ndarray)}  # fmt: skip
    assert outputs.aux is not None
    aux_copies = {key: np.copy(arr) for key, arr in outputs.aux.items()}
    for arr_name in copies:
        getattr(outputs, arr_name).flags.writeable = False  # a write would raise
    for arr in outputs.aux.values():
        arr.flags.writeable = False
    sel = _select(name, outputs, 11)
    _check_selection(sel, name, outputs.n, 11)
    if isinstance(get_strategy(name), ItemScorer):
        item_scores(get_strategy(name), outputs)
    for arr_name, before in copies.items():
        np.testing.assert_array_equal(getattr(outputs, arr_name), before)
    for key, before in aux_copies.items():
        np.testing.assert_array_equal(outputs.aux[key], before)


@pytest.mark.parametrize("name", ALL)
def test_pool_of_one(name: str, pool_factory: Callable[..., PoolOutputs]) -> None:
    outputs = pool_factory(n=1, m=2)
    for k in (0, 1, 5):
        sel = _select(name, outputs, k)
        _check_selection(sel, name, 1, k)
        assert sel.indices.tolist() == ([0] if k else [])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(
    name: str, dtype: type, pool_factory: Callable[..., PoolOutputs]
) -> None:
    outputs = pool_factory(seed=5, dtype=dtype)
    _check_selection(_select(name, outputs, 6), name, 60, 6)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_model_k_equals_one(
    name: str, pool_factory: Callable[..., PoolOutputs]
) -> None:
    outputs = pool_factory(k=1, seed=6)
    _check_selection(_select(name, outputs, 8), name, 60, 8)


def _identical_pool(n: int = 12) -> PoolOutputs:
    probs = np.tile(np.array([0.5, 0.3, 0.2], dtype=np.float32), (n, 4, 1))
    emb = np.ones((n, 3), dtype=np.float32)
    aux = {key: np.full(n, 0.5, dtype=np.float32) for key in ("loss_prediction", "vaal", "waal")}
    return PoolOutputs(probs, emb, np.zeros((2, 3), dtype=np.float32), aux=aux)


@pytest.mark.parametrize("name", ALL)
def test_ties_are_deterministic(name: str) -> None:
    outputs = _identical_pool()
    a = _select(name, outputs, 5, seed=1)
    b = _select(name, outputs, 5, seed=1)
    _check_selection(a, name, outputs.n, 5)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", INDEX_ORDER_ON_TIES)
def test_ties_go_to_the_lower_index(name: str) -> None:
    sel = _select(name, _identical_pool(), 5, seed=2)
    assert sel.indices.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", NEEDS_EMB)
def test_missing_embeddings_is_a_clear_error(
    name: str, pool_factory: Callable[..., PoolOutputs]
) -> None:
    outputs = pool_factory(embeddings=False)
    with pytest.raises(ValueError, match=r"needs embeddings.*emb_N_D"):
        _select(name, outputs, 3)


@pytest.mark.parametrize("name", COUPLED)
def test_missing_aux_is_a_clear_error(name: str, pool_factory: Callable[..., PoolOutputs]) -> None:
    outputs = pool_factory(aux=False)
    with pytest.raises(
        ValueError, match=rf"{name!r} needs the model trained with .*aux\['{name}'\]"
    ):
        _select(name, outputs, 3)


@pytest.mark.parametrize("name", ALL)
def test_negative_or_fractional_k_is_rejected(name: str, pool: PoolOutputs) -> None:
    with pytest.raises(ValueError, match="k must be"):
        _select(name, pool, -1)
    with pytest.raises(ValueError, match="k must be an integer"):
        _select(name, pool, 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL)
def test_no_global_random_state(name: str, pool: PoolOutputs) -> None:
    with pytest.raises(ValueError, match="rng"):
        get_strategy(name).select(pool, 3, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SCORING)
def test_item_scores_shape_and_finiteness(name: str, pool: PoolOutputs) -> None:
    scores = item_scores(get_strategy(name), pool)
    assert scores is not None
    assert scores.shape == (pool.n,)
    assert scores.dtype == np.float64
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", SCORING)
def test_chunked_scoring_equals_scoring_at_once(
    name: str, pool_factory: Callable[..., PoolOutputs]
) -> None:
    outputs = pool_factory(n=103, seed=6)
    strategy = get_strategy(name)
    whole = item_scores(strategy, outputs)
    assert whole is not None
    parts = []
    for start in range(0, outputs.n, 10):
        part = item_scores(strategy, outputs.subset(np.arange(start, min(outputs.n, start + 10))))
        assert part is not None
        parts.append(part)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("name", [n for n in ALL if n not in SCORING])
def test_strategies_without_a_score_say_so(name: str, pool: PoolOutputs) -> None:
    assert item_scores(get_strategy(name), pool) is None
