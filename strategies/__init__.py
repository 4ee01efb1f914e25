"""Acquisition strategies for active learning: pure functions of a model's outputs.

Per-item scores (higher = more informative, float64 ``[N]``) are plain functions of
``probs_N_K_C``; strategies pick k items of a ``PoolOutputs`` and return a ``Selection``;
``get_strategy(name, **params)`` builds one from a config. See ``docs/strategies.md``.
"""

from strategies._kernels import set_torch_threads
from strategies.badge import Badge
from strategies.base import ItemScorer, PoolOutputs, Selection, Strategy, validate_probs
from strategies.batchbald import BatchBALD
from strategies.bayesian import bald, kl_to_consensus, mean_std, variation_ratios, vote_entropy
from strategies.cluster_margin import ClusterMargin
from strategies.coreset import CoreSet, distance_to_labeled
from strategies.coupled import VAAL, WAAL, LossPrediction
from strategies.kmeans import KMeansDiversity, kmeans
from strategies.registry import (
    RandomStrategy,
    available,
    get_strategy,
    item_scores,
    parameters,
    trains,
)
from strategies.scoring import SCORERS, TopScore, scorer
from strategies.stochastic import StochasticBatch
from strategies.typiclust import TypiClust
from strategies.uncertainty import entropy, least_confidence, margin, mean_probs, ratio

__all__ = [
    "SCORERS",
    "VAAL",
    "WAAL",
    "Badge",
    "BatchBALD",
    "ClusterMargin",
    "CoreSet",
    "ItemScorer",
    "KMeansDiversity",
    "LossPrediction",
    "PoolOutputs",
    "RandomStrategy",
    "Selection",
    "StochasticBatch",
    "Strategy",
    "TopScore",
    "TypiClust",
    "available",
    "bald",
    "distance_to_labeled",
    "entropy",
    "get_strategy",
    "item_scores",
    "kl_to_consensus",
    "kmeans",
    "least_confidence",
    "margin",
    "mean_probs",
    "mean_std",
    "parameters",
    "ratio",
    "scorer",
    "set_torch_threads",
    "trains",
    "validate_probs",
    "variation_ratios",
    "vote_entropy",
]
