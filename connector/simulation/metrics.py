"""Figures of a simulation: AUBC, labels to reach a target, the summary over seeds.

AUBC, the area under the budget curve, is the normalised trapezoid of test accuracy over
the number of labels ``L_0 < L_1 < ... < L_R`` (the initial set to the budget):
``AUBC = sum_i (L_{i+1} - L_i) * (acc_i + acc_{i+1}) / 2 / (L_R - L_0)``; 1.0 is perfect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def aubc(labels: Sequence[int], accuracy: Sequence[float]) -> float:
    """Normalised trapezoid area under accuracy(labels); the accuracy itself for 1 point."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


#: A fall in test accuracy between two consecutive rounds larger than this is a sharp drop:
#: more than the noise of a 359-item test set (sd about 0.01 at 0.95), a learner fault.
DROP = 0.04


def sharp_drops(accuracy: Sequence[float], threshold: float = DROP) -> int:
    """How many consecutive rounds lose more than ``threshold`` of test accuracy."""
    a = np.asarray(accuracy, dtype=np.float64)
    return int(np.sum(a[:-1] - a[1:] > threshold))


def labels_to_reach(labels: Sequence[int], accuracy: Sequence[float], target: float) -> int | None:
    """The first number of labels at which accuracy >= target (None if never)."""
    for n, acc in zip(labels, accuracy, strict=True):
        if acc >= target:
            return int(n)
    return None


def summarise(runs: list[dict[str, Any]], strategies: Sequence[str]) -> list[dict[str, Any]]:
    """Per strategy: mean and std over seeds of AUBC, final accuracy, labels to 90/95%,
    and sharp drops (``sharp_drops``) per 100 round steps, over all seeds."""
    out: list[dict[str, Any]] = []
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        aubcs = np.array([r["aubc"] for r in rs])
        row: dict[str, Any] = {
            "strategy": s,
            "n_seeds": len(rs),
            "aubc_mean": float(aubcs.mean()),
            "aubc_std": float(aubcs.std(ddof=1)) if len(rs) > 1 else 0.0,
            "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in rs])),
            "drops_per_100_steps": 100.0
            * sum(sharp_drops(r["accuracy"]) for r in rs)
            / max(1, sum(len(r["accuracy"]) - 1 for r in rs)),
            "select_seconds_mean": float(
                np.mean([np.mean(r["select_seconds"] or [0.0]) for r in rs])
            ),
            "score_seconds_mean": float(
                np.mean([np.mean(r["score_seconds"] or [0.0]) for r in rs])
            ),
        }
        for pct in (90, 95):
            vals = [r[f"labels_to_{pct}"] for r in rs]
            reached = [v for v in vals if v is not None]
            row[f"labels_to_{pct}_mean"] = float(np.mean(reached)) if reached else None
            row[f"labels_to_{pct}_reached"] = len(reached)
        out.append(row)
    return out
