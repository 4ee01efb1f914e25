"""Markdown sections of a round's ``report.md``: per-class accuracy and the confusion
matrix on the random validation split, and the strategy checks of ``rounds.insight``
(labeled vs unlabeled scores, ranking overlap before and after retraining)."""

from __future__ import annotations

from typing import Any


def validation(val: dict[str, Any]) -> list[str]:
    """Per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    per_class = val.get("per_class_accuracy") or {}
    classes = val.get("classes") or list(per_class)
    conf = val.get("confusion")
    if not per_class and not conf:
        return []
    out = [
        "",
        "## Validation split, per class",
        "",
        "| class | accuracy | items |",
        "| --- | --- | --- |",
    ]
    for i, cls in enumerate(classes):
        acc = per_class.get(cls)
        n = sum(conf[i]) if conf else "-"
        out.append(f"| {cls} | {'-' if acc is None else f'{acc:.3f}'} | {n} |")
    if conf:
        out += [
            "",
            "Confusion matrix (rows: true class, columns: predicted):",
            "",
            "| true \\ predicted | " + " | ".join(classes) + " |",
            "| --- |" + " --- |" * len(classes),
        ]
        out += [
            f"| {cls} | " + " | ".join(str(v) for v in conf[i]) + " |"
            for i, cls in enumerate(classes)
        ]
    return out


def checks(sel: dict[str, Any]) -> list[str]:
    """What ``rounds.insight`` found, with its warnings spelled out."""
    out: list[str] = []
    lvu = sel.get("labeled_vs_unlabeled") or {}
    if lvu:
        out += [
            "",
            "## Labeled vs unlabeled scores",
            "",
            f"- labeled (trained on, n={lvu['labeled_n']}): mean {lvu['labeled_mean']:.4g}, "
            f"median {lvu['labeled_median']:.4g}",
            f"- unlabeled candidates (n={lvu['unlabeled_n']}): mean "
            f"{lvu['unlabeled_mean']:.4g}, median {lvu['unlabeled_median']:.4g}",
            f"- P(unlabeled scores above labeled): {lvu['auc_unlabeled_above_labeled']:.2f}",
        ]
        out.append(
            f"- **warning**: {lvu['warning']}"
            if "warning" in lvu
            else "- labeled items score lower, as they should: the model learned from them"
        )
    overlap = sel.get("ranking_overlap") or {}
    if overlap:
        out += ["", "## Ranking before and after retraining", ""]
        if "top_k_overlap" in overlap:
            out.append(
                f"- top {overlap['k']} of {overlap['common']} candidates scored by both the "
                f"previous and this round's model: {overlap['top_k_overlap']:.0%} the same"
            )
            out.append(
                f"- **warning**: {overlap['warning']}"
                if "warning" in overlap
                else "- retraining changed the ranking: the new labels moved the model"
            )
        else:
            out.append(f"- too few candidates in common ({overlap['common']}) to compare")
        if "note" in overlap:
            out.append(f"- note: {overlap['note']}")
    return out
