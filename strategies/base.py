"""Shared types of the acquisition library.

Array names carry their shapes: ``probs_N_K_C`` holds, for N pool items, K stochastic
forward passes (MC-dropout samples or ensemble members; K = 1 for a deterministic model)
and C classes. ``emb_N_D`` holds D-dimensional penultimate-layer features.

House rules (see CONVENTIONS.md): a higher score means a more informative item, scores
are finite and of shape ``[N]``; a ``Selection`` lists indices in priority order;
randomness enters only through a ``numpy.random.Generator``; inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Tolerance on ``sum_c p = 1`` for probabilities given as float32.
PROB_SUM_ATOL = 1e-3


@dataclass(frozen=True)
class PoolOutputs:
    """What a model says about a pool of N unlabeled items.

    Attributes:
        probs_N_K_C: class probabilities, float, each ``[n, k, :]`` sums to 1.
        emb_N_D: optional penultimate-layer embeddings of the pool items.
        labeled_emb_M_D: optional embeddings of the M already-labeled items, used by
            diversity methods (core-set seeds its centres with them).
        ids: optional stable item ids, one per row.
        aux: optional per-item arrays ``[N]`` (finite floats) by name, that a model
            trained for a training-coupled strategy produces beside its probabilities:
            ``"loss_prediction"`` (predicted loss), ``"vaal"`` (discriminator probability
            of "unlabeled"), ``"waal"`` (critic score). See ``strategies.coupled``.
    """

    probs_N_K_C: np.ndarray
    emb_N_D: np.ndarray | None = None
    labeled_emb_M_D: np.ndarray | None = None
    ids: Sequence[str] | None = None
    aux: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        validate_probs(self.probs_N_K_C)
        n = self.probs_N_K_C.shape[0]
        if self.emb_N_D is not None:
            _check_matrix("emb_N_D", self.emb_N_D)
            if self.emb_N_D.shape[0] != n:
                raise ValueError(
                    f"emb_N_D has {self.emb_N_D.shape[0]} rows but probs_N_K_C has {n}; "
                    "pass one embedding per pool item"
                )
        if self.labeled_emb_M_D is not None:
            _check_matrix("labeled_emb_M_D", self.labeled_emb_M_D)
            if self.emb_N_D is not None and self.labeled_emb_M_D.shape[1] != self.emb_N_D.shape[1]:
                raise ValueError(
                    f"labeled_emb_M_D has dimension {self.labeled_emb_M_D.shape[1]} but "
                    f"emb_N_D has {self.emb_N_D.shape[1]}; both must come from the same layer"
                )
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(
                f"{len(self.ids)} ids for {n} rows of probs_N_K_C; pass exactly one id per row"
            )
        for name, arr in (self.aux or {}).items():
            _check_aux(name, arr, n)

    @property
    def n(self) -> int:
        return int(self.probs_N_K_C.shape[0])

    @property
    def k(self) -> int:
        return int(self.probs_N_K_C.shape[1])

    @property
    def c(self) -> int:
        return int(self.probs_N_K_C.shape[2])

    def subset(self, indices_M: np.ndarray) -> PoolOutputs:
        """The outputs of the rows ``indices_M`` (copies, the original is untouched)."""
        idx = np.asarray(indices_M, dtype=np.int64)
        return PoolOutputs(
            probs_N_K_C=self.probs_N_K_C[idx],
            emb_N_D=None if self.emb_N_D is None else self.emb_N_D[idx],
            labeled_emb_M_D=self.labeled_emb_M_D,
            ids=None if self.ids is None else [self.ids[i] for i in idx.tolist()],
            aux=None if self.aux is None else {k: v[idx] for k, v in self.aux.items()},
        )


@dataclass(frozen=True)
class Selection:
    """The chosen items, most informative first.

    Attributes:
        indices: int64 ``[k]`` row indices into the pool, in priority order, unique.
        scores: float64 ``[k]`` the score each item had when it was chosen (for a
            batch-aware selector, its marginal gain at that step). Higher = better.
        strategy: the registry name that produced it.
        info: strategy-specific diagnostics (JSON-serialisable).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def ids(self, outputs: PoolOutputs) -> list[str]:
        if outputs.ids is None:
            raise ValueError("these PoolOutputs carry no ids; pass ids= when building them")
        return [outputs.ids[i] for i in self.indices.tolist()]


@runtime_checkable
class Strategy(Protocol):
    """An acquisition strategy: picks ``k`` items of a pool jointly."""

    name: str
    #: True when the strategy needs ``emb_N_D`` (diversity methods).
    needs_embeddings: bool

    def select(self, outputs: PoolOutputs, k: int, rng: np.random.Generator) -> Selection:
        """Pick ``min(k, N)`` items; ``k = 0`` gives an empty selection."""
        ...


@runtime_checkable
class ItemScorer(Protocol):
    """A strategy that also has a per-item score (higher = more informative).

    ``score`` gives the acquisition score of every candidate, not only the chosen ones,
    so that a caller can record score histograms. For a batch-aware strategy it is the
    score its batch construction starts from (BALD for BatchBALD, the base score for
    stochastic sampling and cluster-margin).
    """

    name: str

    def score(self, outputs: PoolOutputs) -> np.ndarray:
        """float64 ``[N]``, finite; raises ``ValueError`` on NaN or infinite values."""
        ...


#: Rows per chunk when validating: bounds the boolean temporaries on a large pool.
_VALIDATE_CHUNK_ELEMENTS = 1 << 22


def validate_probs(probs_N_K_C: np.ndarray) -> None:
    """Raise ``ValueError`` naming what is wrong with a probability array."""
    if not isinstance(probs_N_K_C, np.ndarray):
        raise ValueError(f"probs_N_K_C must be a numpy array, got {type(probs_N_K_C).__name__}")
    if probs_N_K_C.ndim != 3:
        raise ValueError(
            f"probs_N_K_C must have 3 dimensions [N, K, C], got shape {probs_N_K_C.shape}; "
            "for a deterministic model use probs[:, None, :]"
        )
    if not np.issubdtype(probs_N_K_C.dtype, np.floating):
        raise ValueError(f"probs_N_K_C must be floating point, got {probs_N_K_C.dtype}")
    n, k, c = probs_N_K_C.shape
    if k < 1 or c < 2:
        raise ValueError(f"probs_N_K_C needs K >= 1 and C >= 2, got K={k}, C={c}")
    if n == 0:
        return
    step = max(1, _VALIDATE_CHUNK_ELEMENTS // (k * c))
    worst = 0.0
    for start in range(0, n, step):
        chunk = probs_N_K_C[start : start + step]
        if not np.isfinite(chunk).all():
            raise ValueError(
                "probs_N_K_C contains NaN or infinite values; check the model's outputs"
            )
        if chunk.min() < 0:
            raise ValueError(
                "probs_N_K_C contains negative values; pass softmax outputs, not logits"
            )
        sums = chunk.sum(axis=2, dtype=np.float64)
        worst = max(worst, float(np.abs(sums - 1.0).max()))
    if worst > PROB_SUM_ATOL:
        raise ValueError(
            f"probs_N_K_C rows must sum to 1 over classes (worst deviation {worst:.3g}); "
            "pass softmax outputs, not logits"
        )


def _check_matrix(name: str, arr: np.ndarray) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        shape = getattr(arr, "shape", None)
        raise ValueError(f"{name} must be a 2-D numpy array, got shape {shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_aux(name: str, arr: np.ndarray, n: int) -> None:
    where = f"aux[{name!r}]"
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        shape = getattr(arr, "shape", None)
        raise ValueError(f"{where} must be a 1-D numpy array [N], got shape {shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{where} has {arr.shape[0]} values but probs_N_K_C has {n} rows; "
            "pass one value per pool item"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where} must be floating point, got {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{where} contains NaN or infinite values; check the model's outputs")
