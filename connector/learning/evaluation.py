"""Metrics of a trained model on labeled images: accuracy, macro F1, per-class accuracy,
confusion matrix. Kept apart from ``training`` (which re-exports them) so that each
module owns one thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from connector.learning.images import Decoder, ImageSource, decode_many
from connector.learning.trained import TrainedModel


def evaluate_predictions(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro F1 (over classes present in truth or predictions), per-class
    accuracy (``None`` for a class absent from the truth), confusion matrix ``[true][pred]``.
    """
    c = len(classes)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    n = int(conf.sum())
    tp = np.diag(conf).astype(np.float64)
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)
    per_class = {
        cls: (float(tp[i] / support[i]) if support[i] else None) for i, cls in enumerate(classes)
    }
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": per_class,
        "confusion": conf.tolist(),
        "classes": list(classes),
    }


def evaluate(
    trained: TrainedModel,
    images: Sequence[ImageSource],
    labels: Sequence[int],
    decode: Decoder | None = None,
) -> dict[str, Any]:
    """Metrics of ``trained`` on labeled images (undecodable ones are left out and counted)."""
    x, ok, bad = decode_many(images, trained.data_channels, trained.spec.image_size, decode)
    probs = trained.predict_tensor(x).mean(axis=1)
    y_true = np.asarray([labels[i] for i in ok], dtype=np.int64)
    out = evaluate_predictions(y_true, probs.argmax(1), trained.classes)
    out["skipped"] = len(bad)
    return out
