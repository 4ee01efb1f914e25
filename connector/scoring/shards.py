"""Shards of a round's candidates, what a worker sends back, and the merge into one result.

Pure data and checks, no Ray: a shard is a slice of the candidate list with its start
position (the dropout masks of its items follow their positions, ``learning.masks``); a
``ShardResult`` carries only what the strategy needs (``probs_N_K_C``, ``emb_N_D``) and
the unreadable keys. ``merge`` puts the shards back in candidate order and checks that
every shard came back exactly once and no key is in two rows: a shard retried after its
worker died counts once, so nothing is scored into the outputs twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from connector.contracts.errors import AuthError, ConfigError, ConnectorError, ServiceUnavailable
from strategies import PoolOutputs


class ScoringError(ConnectorError):
    """Scoring on the cluster failed (workers lost too often, the cluster gone): one
    failed attempt of SCORE, which the round core retries, then sends to FAILED."""


@dataclass(frozen=True)
class Shard:
    """``keys``: candidates ``start`` to ``start + len(keys)`` of the round, in order."""

    index: int
    start: int
    keys: tuple[str, ...]

    def describe(self) -> str:
        first = self.keys[0] if self.keys else "-"
        return f"shard {self.index} ({len(self.keys)} items from {first!r})"


def plan_shards(keys: Sequence[str], size: int) -> list[Shard]:
    """``keys`` cut into shards of ``size`` (the last one shorter), in order."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [
        Shard(i, start, tuple(keys[start : start + size]))
        for i, start in enumerate(range(0, len(keys), size))
    ]


@dataclass(frozen=True)
class ShardResult:
    """A worker's answer for one shard: rows for its readable items, in shard order."""

    index: int
    ids: list[str]
    probs_N_K_C: np.ndarray
    emb_N_D: np.ndarray | None
    failures: list[tuple[str, str]]
    seconds: float
    #: Per-item values of a training-coupled module (``PoolOutputs.aux``), by name.
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    #: ``pid@host`` of the worker process, for logs and the retry tests.
    worker: str = ""
    timings: dict[str, float] = field(default_factory=dict)


#: Errors of the whole store, re-raised on the daemon as the same class (their messages
#: name the store without secrets): an outage keeps its outage policy, bad keys fail.
STORE_ERROR_CLASSES: dict[str, type[ConnectorError]] = {
    "ServiceUnavailable": ServiceUnavailable,
    "AuthError": AuthError,
    "ConfigError": ConfigError,
}


@dataclass(frozen=True)
class StoreFailure:
    """A worker met an error of the whole store (``storage.window.STORE_ERRORS``)."""

    index: int
    kind: str
    message: str

    def error(self) -> ConnectorError:
        cls = STORE_ERROR_CLASSES.get(self.kind, ConnectorError)
        return cls(f"{self.message} (read by a Ray worker)")


def merge(
    shards: Sequence[Shard],
    results: Mapping[int, ShardResult],
    *,
    samples: int,
    classes: int,
    feature_dim: int | None,
) -> tuple[PoolOutputs, list[tuple[str, str]]]:
    """One ``PoolOutputs`` (rows in candidate order) and the failures, from every shard's
    result. ``samples`` (K), ``classes`` (C) and ``feature_dim`` (D, None without
    embeddings) shape an empty result. Raises ``ScoringError`` if a shard is missing or a
    key would be in the outputs twice."""
    missing = [s.index for s in shards if s.index not in results]
    if missing or len(results) != len(shards):
        raise ScoringError(f"shards {missing[:5]} came back without a result; score again")
    ids: list[str] = []
    failures: list[tuple[str, str]] = []
    probs, embs = [], []
    auxes: dict[str, list[np.ndarray]] = {}
    for shard in shards:
        res = results[shard.index]
        allowed = set(shard.keys)
        if not set(res.ids) <= allowed or len(set(res.ids)) != len(res.ids):
            raise ScoringError(f"{shard.describe()} came back with rows of other keys")
        ids.extend(res.ids)
        failures.extend(res.failures)
        probs.append(res.probs_N_K_C)
        for name, values in res.aux.items():
            auxes.setdefault(name, []).append(values)
        if feature_dim is not None:
            if res.emb_N_D is None:
                raise ScoringError(f"{shard.describe()} came back without embeddings")
            embs.append(res.emb_N_D)
    if len(set(ids)) != len(ids):
        raise ScoringError("a key came back in two shards; score again")
    probs_N_K_C = (
        np.concatenate(probs) if probs else np.empty((0, samples, classes), dtype=np.float32)
    )
    emb_N_D = None
    if feature_dim is not None:
        emb_N_D = np.concatenate(embs) if embs else np.empty((0, feature_dim), np.float32)
    if any(len(parts) != len(shards) for parts in auxes.values()):
        raise ScoringError("a shard came back without the model's per-item values; score again")
    aux = {name: np.concatenate(parts) for name, parts in auxes.items()} or None
    return PoolOutputs(probs_N_K_C=probs_N_K_C, emb_N_D=emb_N_D, ids=ids, aux=aux), failures
