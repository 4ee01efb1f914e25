"""Training modes as simulation candidates: one result over supervised and semi-supervised runs.

``simulate --semi-supervised none,fixmatch`` runs the whole simulation once per training
mode, with the same seeds (so the same validation split, initial labels and model seeds:
the paired design holds across modes), and merges the results here. A run of a mode other
than supervised is named ``<strategy>+<mode>`` (``margin+fixmatch``), so the summary, the
table, the plot and ``recommend`` compare every (strategy, mode) pair as one candidate, and
``random`` (supervised) stays the baseline they are judged against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.simulation.metrics import labels_to_reach, summarise

SUPERVISED = "supervised"


def candidate_name(strategy: str, mode: str) -> str:
    """``margin`` + ``fixmatch`` -> ``margin+fixmatch``; supervised keeps the strategy."""
    return strategy if mode in ("none", SUPERVISED) else f"{strategy}+{mode}"


def split_candidate(name: str) -> tuple[str, str]:
    """``margin+fixmatch`` -> ``("margin", "fixmatch")``; ``margin`` -> supervised."""
    strategy, _, mode = name.partition("+")
    return strategy, mode or SUPERVISED


def merge_modes(results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``run_simulation`` result from ``{mode: result}`` (same dataset and seeds).

    Runs keep their figures and gain ``training_mode``; the config lists the modes; the
    summary is recomputed over every candidate; elapsed seconds add up. The all-labels
    model (supervised in every mode) is the first result's: labels to 90/95 % of its
    accuracy are recomputed for every run against it.
    """
    if not results:
        raise ValueError("merge_modes needs at least one result")
    modes = list(results)
    first = results[modes[0]]
    full_data = {
        s["seed"]: s["full_data"]["accuracy"] for s in first["seeds"] if s.get("full_data")
    }
    runs: list[dict[str, Any]] = []
    names: list[str] = []
    for mode, res in results.items():
        for run in res["runs"]:
            name = candidate_name(run["strategy"], mode)
            merged = {**run, "strategy": name, "training_mode": split_candidate(name)[1]}
            full = full_data.get(run["seed"])
            for pct in (90, 95):
                merged[f"labels_to_{pct}"] = (
                    None
                    if full is None
                    else labels_to_reach(run["labels"], run["accuracy"], pct / 100 * full)
                )
            runs.append(merged)
            if name not in names:
                names.append(name)
    return {
        **first,
        "config": {**first["config"], "semi_supervised": modes},
        "runs": runs,
        "summary": summarise(runs, names),
        "elapsed_seconds": round(sum(r["elapsed_seconds"] for r in results.values()), 3),
    }


__all__ = ["SUPERVISED", "candidate_name", "merge_modes", "split_candidate"]
