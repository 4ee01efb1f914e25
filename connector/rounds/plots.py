"""The report's plots (matplotlib, Agg): the score histogram with the chosen items
marked, the learning curve with the random baseline, the confusion matrix.

matplotlib is imported when a plot is drawn: the daemon's start-up does not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The colour of the chosen items in the score histogram (a test looks for it).
CHOSEN_RGB = (214, 39, 40)
CHOSEN = "#d62728"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scores(
    path: Path, scores_N: np.ndarray, chosen: Sequence[float], title: str, xlabel: str
) -> None:
    """Candidates' histogram (log counts, so a batch of 20 among 10^5 still shows), the
    chosen items' histogram on the same bins, and a tick under the axis per chosen item."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    edges = np.histogram_bin_edges(np.concatenate([scores_N, np.asarray(chosen, float)]), 40)
    ax.hist(scores_N, bins=edges, color="#8da0cb", label=f"candidates (n={scores_N.size})")
    if len(chosen):
        ax.hist(chosen, bins=edges, color=CHOSEN, label=f"chosen (n={len(chosen)})")
        ax.plot(chosen, np.full(len(chosen), 0.6), "|", color=CHOSEN, markersize=14, mew=1.5)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items (log)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curve(
    path: Path, points: Sequence[tuple[int, float]], baseline: Sequence[tuple[int, float]] = ()
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", label="this run")
    if baseline:
        bx, by = zip(*baseline, strict=True)
        ax.plot(bx, by, marker="s", linestyle="--", color="grey", label="random baseline")
        ax.legend()
    ax.set_xlabel("training labels")
    ax.set_ylabel("validation accuracy")
    ax.set_title("learning curve (random validation split)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(
    path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str
) -> None:
    plt = _pyplot()
    conf = np.asarray(matrix, dtype=np.float64)
    c = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * c, 1.0 + 0.45 * c))
    ax.imshow(conf, cmap="Blues")
    for i in range(c):
        for j in range(c):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(c), classes, rotation=90)
    ax.set_yticks(range(c), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
