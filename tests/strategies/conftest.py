"""Small synthetic pools for the strategy tests (no model, no files)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from strategies import PoolOutputs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def make_pool(
    n: int = 60,
    k: int = 5,
    c: int = 4,
    d: int = 8,
    m: int = 6,
    seed: int = 0,
    dtype: type = np.float32,
    embeddings: bool = True,
    aux: bool = True,
) -> PoolOutputs:
    """A pool of n items in a few clusters, with K noisy passes and m labeled embeddings,
    and (``aux``) the per-item arrays of the training-coupled strategies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(4, d))
    group = rng.integers(4, size=n)
    emb = centres[group] + rng.normal(size=(n, d))
    w = rng.normal(size=(d, c))
    logits = (emb @ w)[:, None, :] + rng.normal(0, 1.5, size=(n, k, c))
    probs: np.ndarray = softmax(logits).astype(dtype)
    labeled = centres[rng.integers(4, size=m)] + rng.normal(size=(m, d))
    # What the coupled trainers output: a loss (>= 0), a probability, a probability.
    aux_arrays = {
        "loss_prediction": np.abs(rng.normal(size=n)).astype(dtype),
        "vaal": rng.uniform(size=n).astype(dtype),
        "waal": rng.uniform(size=n).astype(dtype),
    }
    return PoolOutputs(
        probs_N_K_C=probs,
        emb_N_D=emb.astype(dtype) if embeddings else None,
        labeled_emb_M_D=labeled.astype(dtype) if embeddings and m else None,
        ids=[f"item-{i}" for i in range(n)],
        aux=aux_arrays if aux else None,
    )


@pytest.fixture
def pool_factory() -> Callable[..., PoolOutputs]:
    return make_pool


@pytest.fixture
def pool() -> PoolOutputs:
    return make_pool()
