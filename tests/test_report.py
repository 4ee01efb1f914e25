"""A round's report: per-class accuracy and confusion on the validation split, labeled vs
unlabeled scores, ranking overlap before and after retraining, the chosen items visible
in the score histogram, the learning curve with the random baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from connector.rounds import insight, plots, report
from tests.fakes import build, label_all


def test_round_report_has_every_section(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects, strategy={"name": "entropy"})
    for _ in range(3):
        engine.step()
        label_all(labeling, truth)
    folder = engine.rounds_dir / "0002"
    metrics = json.loads((folder / "metrics.json").read_text())
    val = metrics["validation"]
    assert set(val["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert np.asarray(val["confusion"]).sum() == val["n"] == 30
    md = (folder / "report.md").read_text()
    assert "## Validation split, per class" in md and "Confusion matrix" in md
    assert (folder / "confusion.png").exists()
    lvu = metrics["selection"]["labeled_vs_unlabeled"]
    assert lvu["labeled_n"] == 40 and lvu["unlabeled_n"] > 100
    assert 0.0 <= lvu["auc_unlabeled_above_labeled"] <= 1.0
    assert "## Labeled vs unlabeled scores" in md
    overlap = metrics["selection"]["ranking_overlap"]
    assert overlap["common"] > 100 and overlap["k"] == 20
    assert 0.0 <= overlap["top_k_overlap"] <= 1.0
    assert "## Ranking before and after retraining" in md
    hist = json.loads((folder / "diagnostics.json").read_text())["score_histogram"]
    assert sum(hist["chosen_counts"]) == 20 and sum(hist["counts"]) == lvu["unlabeled_n"]
    # The chosen items are visible in the plot: pixels of their colour.
    pixels = np.asarray(Image.open(folder / "scores.png").convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - plots.CHOSEN_RGB).sum(axis=1) < 30).sum() > 50


def test_labeled_scoring_as_high_as_unlabeled_is_called_out() -> None:
    rng = np.random.default_rng(0)
    good = insight.labeled_vs_unlabeled(rng.uniform(0, 0.3, 50), rng.uniform(0.2, 1, 500))
    assert good["labeled_score_lower"] and "warning" not in good
    assert good["auc_unlabeled_above_labeled"] > 0.9
    same = insight.labeled_vs_unlabeled(rng.uniform(0, 1, 50), rng.uniform(0, 1, 500))
    assert not same["labeled_score_lower"]
    assert "has not learned what its labels teach" in same["warning"]
    assert "`al-connector round set --strategy`" in same["warning"]


def test_a_ranking_retraining_did_not_change_is_called_out(tmp_path: Path) -> None:
    ids = [f"k{i:04d}" for i in range(300)]
    scores = np.random.default_rng(1).uniform(size=300)
    before, after = tmp_path / "0001", tmp_path / "0002"
    before.mkdir()
    after.mkdir()
    insight.save_scores(before, ids, scores, "entropy")
    # Round 2 scores the same candidates minus the 20 it labeled, ranked the same way.
    unchanged = insight.ranking_overlap(before, ids[20:], scores[20:] * 2, "entropy", 20)
    assert (
        unchanged["top_k_overlap"] == 1.0 and "barely changed the ranking" in unchanged["warning"]
    )
    moved = insight.ranking_overlap(before, ids[20:], -scores[20:], "margin", 20)
    assert moved["top_k_overlap"] == 0.0 and "warning" not in moved
    assert "two strategies, not two models" in moved["note"]
    md = "\n".join(report.report_sections.checks({"ranking_overlap": unchanged}))
    assert "barely changed the ranking" in md


def test_learning_curve_shows_the_random_baseline(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    for _ in range(3):
        engine.step()
        label_all(labeling, truth)
    engine.state.set_meta(report.RANDOM_BASELINE, json.dumps([[20, 0.4], [40, 0.55]]))
    summary = report.summarise(engine.state, engine.rounds_dir)
    assert summary["random_baseline"] == [(20, 0.4), (40, 0.55)]
    saved = json.loads((engine.rounds_dir / "report.json").read_text())
    assert saved["random_baseline"] == [[20, 0.4], [40, 0.55]]
    assert (engine.rounds_dir / "learning_curve.png").exists()
