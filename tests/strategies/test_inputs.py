"""Bad inputs and bad configuration get a ValueError that says what is wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from strategies import PoolOutputs, available, get_strategy, parameters

from .conftest import make_pool


def _probs(n: int = 5, k: int = 2, c: int = 3) -> np.ndarray:
    return np.full((n, k, c), 1.0 / c, dtype=np.float32)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p * 2, "must sum to 1"),
        (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 3, np.nan, p), "NaN or infinite"),
        (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 3, np.inf, p), "NaN or infinite"),
        (lambda p: p - np.where(np.arange(p.size).reshape(p.shape) == 0, 0.5, 0.0), "negative"),
        (lambda p: p[:, 0, :], r"3 dimensions \[N, K, C\]"),
        (lambda p: p[None], r"3 dimensions \[N, K, C\]"),
        (lambda p: (p * 3).astype(np.int64), "floating point"),
        (lambda p: p[:, :, :1], "C >= 2"),
        (lambda p: p.tolist(), "numpy array"),
    ],
)
def test_bad_probabilities(mutate: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoolOutputs(mutate(_probs()))  # type: ignore[operator]


def test_logits_are_named_as_the_likely_mistake() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 1, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="softmax outputs, not logits"):
        PoolOutputs(logits)


def test_bad_values_far_into_a_large_pool_are_found() -> None:
    p = np.full((50_000, 1, 4), 0.25, dtype=np.float32)  # several validation chunks
    p[-1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PoolOutputs(p)


def test_mismatched_ids_and_rows() -> None:
    with pytest.raises(ValueError, match="4 ids for 5 rows"):
        PoolOutputs(_probs(), ids=["a", "b", "c", "d"])


def test_mismatched_embedding_rows_and_dims() -> None:
    with pytest.raises(ValueError, match="emb_N_D has 4 rows but probs_N_K_C has 5"):
        PoolOutputs(_probs(), emb_N_D=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        PoolOutputs(_probs(), emb_N_D=np.zeros(5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        PoolOutputs(_probs(), emb_N_D=np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="same layer"):
        PoolOutputs(_probs(), emb_N_D=np.zeros((5, 2)), labeled_emb_M_D=np.zeros((3, 4)))


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'bald2'") as err:
        get_strategy("bald2")
    for name in available():
        assert name in str(err.value)


def test_unknown_parameter_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"does not take parameter.*temperature") as err:
        get_strategy("power", temperature=2.0)
    assert "base='entropy'" in str(err.value) and "beta=1.0" in str(err.value)
    with pytest.raises(ValueError, match=r"accepted parameters.*none"):
        get_strategy("coreset", k=3)


def test_parameters_from_a_config() -> None:
    assert get_strategy("power", base="bald", beta=1.0).base == "bald"  # type: ignore[attr-defined]
    assert parameters("batchbald")["num_samples"] == 1000
    assert parameters("random") == {}
    assert get_strategy("badge").needs_embeddings


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("power", {"base": "coreset"}, "unknown per-item score 'coreset'; known scores: bald"),
        ("power", {"beta": -1.0}, "beta must be finite and >= 0"),
        ("softmax", {"beta": "hot"}, "beta must be a number"),
        ("batchbald", {"num_samples": 0}, "num_samples must be a positive integer"),
        ("batchbald", {"pool_limit": 2.5}, "pool_limit must be a positive integer or None"),
        ("batchbald", {"lazy": "yes"}, "lazy must be true or false"),
        ("entropy", {"chunk_rows": 0}, "chunk_rows must be a positive integer"),
        ("kmeans", {"max_iter": 0}, "max_iter must be a positive integer"),
        ("typiclust", {"knn": -3}, "knn must be a positive integer"),
        ("cluster_margin", {"n_clusters": 0}, "n_clusters must be a positive integer"),
    ],
)
def test_bad_parameter_values(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_strategy(name, **params)


def test_power_sampling_rejects_negative_scores() -> None:
    from strategies.stochastic import stochastic_log_weights

    with pytest.raises(ValueError, match="non-negative scores"):
        stochastic_log_weights(np.array([0.2, -0.1]), "power", 1.0)


def test_coreset_has_a_distance_score_only_with_a_labeled_set() -> None:
    from strategies import distance_to_labeled

    with pytest.raises(ValueError, match="labeled_emb_M_D"):
        distance_to_labeled(make_pool(m=0))
    d = distance_to_labeled(make_pool(m=3))
    assert d.shape == (60,) and (d >= 0).all()


def test_selection_ids_follow_the_indices() -> None:
    outputs = make_pool()
    sel = get_strategy("entropy").select(outputs, 3, np.random.default_rng(0))
    assert sel.ids(outputs) == [f"item-{i}" for i in sel.indices.tolist()]
    with pytest.raises(ValueError, match="carry no ids"):
        sel.ids(PoolOutputs(outputs.probs_N_K_C))


def test_torch_threads_are_scoped_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from strategies import bald, set_torch_threads

    seen: list[int] = []
    original = torch.log

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(torch, "log", spy)
        bald(make_pool(n=10).probs_N_K_C)
        monkeypatch.undo()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's setting is back
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)
