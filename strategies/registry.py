"""Maps config names (and parameters) to strategies.

``get_strategy("power", base="bald", beta=1.0)`` builds a strategy from the ``name`` and
keyword parameters a config file holds; an unknown name, an unknown parameter or a bad
value is a ``ValueError`` that lists what is accepted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from strategies._common import check_rng, clip_k
from strategies.badge import Badge
from strategies.base import ItemScorer, PoolOutputs, Selection, Strategy
from strategies.batchbald import BatchBALD
from strategies.cluster_margin import ClusterMargin
from strategies.coreset import CoreSet
from strategies.coupled import VAAL, WAAL, LossPrediction
from strategies.kmeans import KMeansDiversity
from strategies.scoring import SCORERS, TopScore
from strategies.stochastic import MODES, StochasticBatch
from strategies.typiclust import TypiClust


class RandomStrategy:
    """Uniform random sampling without replacement: the baseline every strategy must beat."""

    name = "random"
    needs_embeddings = False

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        rng = check_rng(rng)
        k = clip_k(k, outputs.n)
        idx = rng.permutation(outputs.n)[:k].astype(np.int64)
        return Selection(idx, np.zeros(k, dtype=np.float64), self.name)


_REGISTRY: dict[str, Callable[..., Any]] = {
    "random": RandomStrategy,
    **{name: partial(TopScore, name) for name in SCORERS},
    **{mode: partial(StochasticBatch, mode) for mode in MODES},
    "batchbald": BatchBALD,
    "cluster_margin": ClusterMargin,
    "coreset": CoreSet,
    "badge": Badge,
    "kmeans": KMeansDiversity,
    "typiclust": TypiClust,
    "loss_prediction": LossPrediction,
    "vaal": VAAL,
    "waal": WAAL,
}


def available() -> list[str]:
    """Every registry name, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Any]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(available())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, Any]:
    """The keyword parameters strategy ``name`` accepts, with their defaults."""
    sig = inspect.signature(_factory(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def get_strategy(name: str, **params: Any) -> Strategy:
    """The strategy registered as ``name``, built with ``params`` (from a config file).

    Raises ``ValueError`` naming the known strategies for an unknown name, and the
    accepted parameters for an unknown parameter; each strategy checks its values.
    """
    factory = _factory(name)
    accepted = parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        listed = ", ".join(f"{p}={v!r}" for p, v in accepted.items()) or "none"
        raise ValueError(
            f"strategy {name!r} does not take parameter(s) {', '.join(unknown)}; "
            f"accepted parameters (with defaults): {listed}"
        )
    strategy: Strategy = factory(**params)
    return strategy


def item_scores(strategy: Strategy, outputs: PoolOutputs) -> np.ndarray | None:
    """The per-item acquisition score of every candidate, or None if the strategy has none.

    For histograms of the scores of the whole pool, not only of the chosen items.
    """
    if isinstance(strategy, ItemScorer):
        return strategy.score(outputs)
    return None


def trains(strategy: Strategy) -> str | None:
    """What ``strategy`` needs trained with the classifier (``strategies.coupled``), or None."""
    value = getattr(strategy, "trains", None)
    return value if isinstance(value, str) else None
