"""What a round's report checks about the strategy and the model, beyond accuracy:

- **labeled vs unlabeled**: the acquisition score of items the model trained on against
  the candidates'. A model that learned from its labels finds them uninformative, so
  they should score lower; when they do not, the score is not tracking what the model
  knows (underfitting, noisy labels, or a score that ignores the model).
- **ranking overlap**: how many of the top-ranked candidates before retraining (the
  previous round's model) are still top-ranked after it, on the candidates both rounds
  scored. A ranking that retraining does not change means the new labels taught the
  model little about the pool.

Each round keeps a bounded sample of its candidates' scores (``pool_scores.npz``) for
the next round's comparison; the sample is chosen by a hash of the item id, so the
samples of two rounds overlap whatever the pool size.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Candidates' scores kept per round for the next round's overlap (about 1 MB).
KEEP_SCORES = 50_000
SCORES_FILE = "pool_scores.npz"
#: Labeled items scored per round for the comparison (a bounded extra inference).
LABELED_SAMPLE = 500
#: P(unlabeled scores above labeled) under which the report warns.
AUC_WARN = 0.6
#: Top-k overlap at or above which the report says the ranking did not change.
OVERLAP_SAME = 0.8


def labeled_vs_unlabeled(labeled_N: np.ndarray, unlabeled_M: np.ndarray) -> dict[str, Any]:
    """Score statistics of both groups and ``auc``: the probability that a random
    unlabeled item scores above a random labeled one (ties count half; Mann-Whitney U)."""
    if labeled_N.size == 0 or unlabeled_M.size == 0:
        return {}
    both = np.concatenate([labeled_N, unlabeled_M]).astype(np.float64)
    # Average ranks (ties share them), then U of the unlabeled group.
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    m, n = unlabeled_M.size, labeled_N.size
    u = ranks[n:].sum() - m * (m + 1) / 2.0
    auc = float(u / (m * n))
    out: dict[str, Any] = {
        "labeled_n": int(n),
        "unlabeled_n": int(m),
        "labeled_mean": float(labeled_N.mean()),
        "unlabeled_mean": float(unlabeled_M.mean()),
        "labeled_median": float(np.median(labeled_N)),
        "unlabeled_median": float(np.median(unlabeled_M)),
        "auc_unlabeled_above_labeled": auc,
        "labeled_score_lower": bool(auc >= AUC_WARN),
    }
    if auc < AUC_WARN:
        out["warning"] = (
            f"labeled items do not score lower than unlabeled ones (P(unlabeled above "
            f"labeled) = {auc:.2f}; 0.5 is no difference): the model has not learned what "
            "its labels teach (too little training, noisy labels: check them with "
            "`al-connector export`), or the strategy's score does not follow the model's "
            "knowledge (try another with `al-connector round set --strategy`)"
        )
    return out


def _kept(ids: list[str], n_total: int) -> np.ndarray:
    """Rows to keep: a hash of the id under a threshold, so samples of rounds nest."""
    if n_total <= KEEP_SCORES:
        return np.arange(len(ids))
    cut = int(0xFFFFFFFF * KEEP_SCORES / n_total)
    return np.asarray([i for i, x in enumerate(ids) if zlib.crc32(x.encode()) <= cut])


def save_scores(round_dir: Path, ids: list[str], scores_N: np.ndarray, strategy: str) -> None:
    rows = _kept(ids, len(ids))
    tmp = round_dir / (SCORES_FILE + ".tmp.npz")
    np.savez_compressed(
        tmp,
        ids=np.asarray([ids[i] for i in rows.tolist()], dtype=object).astype(str),
        scores=np.asarray(scores_N, dtype=np.float64)[rows],
        strategy=np.asarray(strategy),
    )
    tmp.replace(round_dir / SCORES_FILE)


def ranking_overlap(
    previous_dir: Path, ids: list[str], scores_N: np.ndarray, strategy: str, k: int
) -> dict[str, Any]:
    """Overlap of the top ``k`` before retraining (``previous_dir``'s saved scores) and
    after it (``scores_N`` of ``ids``), on the candidates both scored."""
    path = previous_dir / SCORES_FILE
    if not path.exists() or k < 1:
        return {}
    with np.load(path, allow_pickle=False) as saved:
        prev_ids, prev_scores = saved["ids"].tolist(), saved["scores"]
        prev_strategy = str(saved["strategy"])
    pos = {item: j for j, item in enumerate(ids)}
    common = [(pos[item], s) for item, s in zip(prev_ids, prev_scores, strict=True) if item in pos]
    out: dict[str, Any] = {"previous_strategy": prev_strategy, "common": len(common)}
    if prev_strategy != strategy:
        out["note"] = (
            f"the previous round ranked with {prev_strategy}, this one with {strategy}: "
            "the overlap compares two strategies, not two models"
        )
    kk = min(k, len(common) // 2)
    if kk < 1:
        return out
    rows = np.asarray([r for r, _ in common])
    before = np.asarray([s for _, s in common], dtype=np.float64)
    after = np.asarray(scores_N, dtype=np.float64)[rows]
    top_before = set(np.argsort(-before, kind="stable")[:kk].tolist())
    top_after = set(np.argsort(-after, kind="stable")[:kk].tolist())
    overlap = len(top_before & top_after) / kk
    out.update(k=kk, top_k_overlap=overlap)
    if overlap >= OVERLAP_SAME:
        out["warning"] = (
            f"retraining barely changed the ranking ({overlap:.0%} of the top {kk} stay on "
            "top): the new labels taught the model little about the pool; a bigger batch "
            "or another strategy (`al-connector round set`) may help"
        )
    return out


def round_checks(
    round_dir: Path,
    previous_dir: Path,
    ids: list[str],
    scores_N: np.ndarray,
    labeled_scores: np.ndarray | None,
    strategy: str,
    k: int,
) -> dict[str, Any]:
    """Both checks for a round's report; keeps this round's scores for the next one."""
    out: dict[str, Any] = {}
    if labeled_scores is not None:
        out["labeled_vs_unlabeled"] = labeled_vs_unlabeled(labeled_scores, scores_N)
    out["ranking_overlap"] = ranking_overlap(previous_dir, ids, scores_N, strategy, k)
    save_scores(round_dir, ids, scores_N, strategy)
    return out
