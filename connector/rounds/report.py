"""Per-round reports: what was chosen and why, how the model does, whether to stop.

Each round writes ``rounds/NNNN/``: ``selection.json`` (ranked items with scores and
prelabels), ``diagnostics.json`` (acquisition-score statistics over all candidates),
``scores.png`` (their histogram, chosen items marked), and, once trained, ``model.pt``.
``rounds/report.json`` and ``rounds/learning_curve.png`` summarise all rounds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from connector.files import atomic_write_text
from connector.rounds import plots, report_sections, stopping
from connector.settings import StoppingSettings
from connector.state import PHASE_ORDER, Round, SelectedItem, StateDB, iso, utcnow
from strategies import PoolOutputs, Selection, Strategy, item_scores

log = logging.getLogger(__name__)

#: Meta key: the random baseline's learning curve, JSON ``[[training labels, accuracy],
#: ...]``, written by whoever runs one next to the rounds (the demo).
RANDOM_BASELINE = "random_baseline"


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a reader never sees a half-written file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def _entropy_N(probs_N_C: np.ndarray) -> np.ndarray:
    p = np.clip(probs_N_C.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def score_diagnostics(strategy: Strategy, pool: PoolOutputs, sel: Selection) -> dict[str, Any]:
    """Statistics of the acquisition scores over all candidates, and of the pool's
    predictive uncertainty (signals for stopping: when the pool's mean max-probability
    stops rising and few items remain uncertain, more labels buy little; Zhu et al. 2008,
    "Confidence-based stopping criteria for active learning").
    """
    out: dict[str, Any] = {}
    if pool.n == 0:
        return out
    probs_N_C = pool.probs_N_K_C.mean(axis=1)
    conf = probs_N_C.max(axis=1).astype(np.float64)
    ent = _entropy_N(probs_N_C)
    out["pool_mean_confidence"] = float(conf.mean())
    out["pool_mean_entropy"] = float(ent.mean())
    out["pool_fraction_confidence_below_0.9"] = float((conf < 0.9).mean())
    scores = item_scores(strategy, pool)
    if scores is not None and scores.shape == (pool.n,):
        counts, edges = np.histogram(scores, bins=20)
        chosen = scores[sel.indices] if len(sel) else np.empty(0)
        chosen_counts, _ = np.histogram(chosen, bins=edges)
        out["score_histogram"] = {
            "counts": counts.tolist(),
            "chosen_counts": chosen_counts.tolist(),
            "edges": edges.tolist(),
        }
        out["score_mean_pool"] = float(scores.mean())
        out["score_mean_selected"] = float(chosen.mean()) if chosen.size else None
        # Where the chosen items sit among all candidates (1.0 = the very top).
        ranks = scores.argsort().argsort() / max(1, pool.n - 1)
        out["selected_mean_percentile"] = float(ranks[sel.indices].mean()) if len(sel) else None
        out["pool_scores"] = scores
    return out


def write_selection(
    round_dir: Path,
    rnd: Round,
    selected: Sequence[SelectedItem],
    diagnostics: dict[str, Any],
    *,
    plot: bool = True,
) -> None:
    items = [
        {
            "rank": s.rank,
            "item_id": s.item_id,
            "split": s.split,
            "score": s.score,
            "predicted_label": s.predicted_label,
            "confidence": s.confidence,
        }
        for s in selected
    ]
    write_json(
        round_dir / "selection.json",
        {"round": rnd.round, "strategy": rnd.strategy, "params": rnd.params, "items": items},
    )
    diag = {k: v for k, v in diagnostics.items() if k != "pool_scores"}
    write_json(round_dir / "diagnostics.json", diag)
    pool_scores = diagnostics.get("pool_scores")
    if plot and pool_scores is not None:
        chosen = [s.score for s in selected if s.score is not None]
        plots.scores(
            round_dir / "scores.png",
            np.asarray(pool_scores),
            chosen,
            f"round {rnd.round}",
            f"acquisition score ({rnd.strategy})",
        )


def write_round_report(
    round_dir: Path, rnd: Round, done: int, total: int, *, plot: bool = True
) -> None:
    """``metrics.json`` (everything the round measured), ``report.md`` (for people) and
    ``confusion.png``."""
    write_json(
        round_dir / "metrics.json",
        {
            "round": rnd.round,
            "model_version": rnd.model_version,
            "strategy": rnd.strategy,
            "params": rnd.params,
            "trigger": rnd.trigger,
            "started_at": iso(rnd.started_at),
            "batch_done": done,
            "batch_total": total,
            **rnd.metrics,
        },
    )
    val = rnd.metrics.get("validation") or {}
    sel = rnd.metrics.get("selection") or {}
    lines = [
        f"# Round {rnd.round}",
        "",
        f"- model version: `{rnd.model_version or 'none (no model yet)'}`",
        f"- strategy: `{rnd.strategy}` {rnd.params or ''} (started by {rnd.trigger})",
        f"- training labels: {rnd.metrics.get('n_train', 0)}",
    ]
    if val.get("accuracy") is not None:
        f1 = f", macro F1 {val['macro_f1']:.3f}" if val.get("macro_f1") is not None else ""
        lines.append(f"- validation accuracy: {val['accuracy']:.3f} on {val['n']} items{f1}")
        per_class = val.get("per_class_accuracy") or {}
        if isinstance(per_class, dict) and per_class:
            worst = sorted(per_class.items(), key=lambda kv: (kv[1] is None, kv[1]))[:3]
            lines.append(
                "- weakest classes: " + ", ".join(f"{c} {a:.2f}" for c, a in worst if a is not None)
            )
    lines.append(f"- batch: {total} tasks pushed, {done} done so far")
    if rnd.metrics.get("duplicates"):
        lines.append(
            f"- duplicates not pushed: {rnd.metrics['duplicates']} (the same image as another "
            "item; `al-connector items show KEY` names it)"
        )
    if sel.get("candidates") is not None:
        lines.append(
            f"- candidates scored: {sel['candidates']}"
            + (f", unreadable: {len(sel['unreadable'])}" if sel.get("unreadable") else "")
        )
    if sel.get("selected_mean_percentile") is not None:
        lines.append(
            f"- chosen items sit at the {100 * sel['selected_mean_percentile']:.0f}th "
            "percentile of the candidates' scores on average"
        )
    if sel.get("pool_mean_confidence") is not None:
        lines.append(
            f"- pool mean confidence: {sel['pool_mean_confidence']:.3f} (rising and "
            "flattening: more labels buy little)"
        )
    lines += report_sections.validation(val)
    lines += report_sections.checks(sel)
    if plot and val.get("confusion") and val.get("classes"):
        plots.confusion(
            round_dir / "confusion.png",
            val["confusion"],
            val["classes"],
            f"round {rnd.round}: validation split",
        )
        lines += ["", "Plots: `scores.png` (chosen items in red), `confusion.png`."]
    stop = rnd.metrics.get("stopped")
    if stop:
        lines += [
            "",
            f"## Stopped by {stop['criterion']}",
            "",
            f"{stop['message']}",
            "",
            "Figures: " + ", ".join(f"{k} {v}" for k, v in stop["figures"].items()),
        ]
    atomic_write_text(round_dir / "report.md", "\n".join(lines) + "\n")


def collect(state: StateDB, stopping_cfg: StoppingSettings | None = None) -> dict[str, Any]:
    """All rounds' figures, the random baseline and the stopping state (the criteria's
    figures when ``stopping_cfg`` is given). Reads the state db only: ``status`` uses it
    and must not write (it may run as another user, or beside a read-only mount)."""
    rows = []
    for rnd in state.rounds():
        val = rnd.metrics.get("validation") or {}
        rows.append(
            {
                "round": rnd.round,
                "phase": rnd.phase.value,
                "strategy": rnd.strategy,
                "model_version": rnd.model_version,
                "started_at": iso(rnd.started_at),
                "labels": rnd.metrics.get("labels"),
                "n_train": rnd.metrics.get("n_train"),
                "validation_accuracy": val.get("accuracy"),
                "validation_n": val.get("n"),
                "pool_mean_confidence": (rnd.metrics.get("selection") or {}).get(
                    "pool_mean_confidence"
                ),
            }
        )
    raw = state.get_meta(RANDOM_BASELINE)
    return {
        "rounds": rows,
        "stopping": stopping.state_of(stopping_cfg, state),
        "random_baseline": [(int(n), float(a)) for n, a in json.loads(raw)] if raw else [],
    }


def summarise(
    state: StateDB, rounds_dir: Path, stopping_cfg: StoppingSettings | None = None
) -> dict[str, Any]:
    """``collect``'s figures, written to ``rounds/report.json``, and the learning curve."""
    summary = collect(state, stopping_cfg)
    write_json(rounds_dir / "report.json", summary)
    points: list[tuple[int, float]] = [
        (int(r["n_train"]), float(r["validation_accuracy"]))
        for r in summary["rounds"]
        if r["n_train"] and r["validation_accuracy"] is not None
    ]
    if len(points) >= 2:
        plots.learning_curve(rounds_dir / "learning_curve.png", points, summary["random_baseline"])
    return summary


def describe_round(state: StateDB, rnd: Round, rounds_dir: Path) -> dict[str, Any]:
    """One round as ``rounds list`` / ``rounds show`` print it: its plan, batch, phase
    durations (seconds; WAIT from the end of the push to the next round, or until now),
    metrics and where its report is."""
    done, total = state.batch_progress(rnd.round)
    metrics = dict(rnd.metrics)
    measured = metrics.pop("phase_seconds", None) or {}
    durations = {p.value: measured[p.value] for p in PHASE_ORDER if p.value in measured}
    if "pushed" in metrics and rnd.phase.value in ("WAIT", "DONE"):
        # phase_at is when WAIT began: closing a round leaves it alone.
        end = rnd.finished_at or utcnow()
        durations["WAIT"] = round((end - rnd.phase_at).total_seconds(), 1)
    folder = rounds_dir / f"{rnd.round:04d}"
    report = folder / "report.md"
    val = metrics.get("validation") or {}
    return {
        "round": rnd.round,
        "phase": rnd.phase.value,
        "trigger": rnd.trigger,
        "strategy": rnd.strategy,
        "params": rnd.params,
        "batch_size": rnd.batch_size,
        "plan": rnd.plan,
        "model_version": rnd.model_version,
        "started_at": iso(rnd.started_at),
        "finished_at": iso(rnd.finished_at),
        "batch_done": done,
        "batch_total": total,
        "validation_accuracy": val.get("accuracy"),
        "phase_seconds": durations,
        "metrics": metrics,
        "error": rnd.error,
        "report": str(report if report.exists() else folder),
    }
