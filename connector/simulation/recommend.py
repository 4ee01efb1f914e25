"""Which strategy a team should run, from a simulation on its own labeled data.

The rule is the issue's (15, item 5): a strategy that lost to random on any seed is not
recommended, however good its mean; among those that never lost (paired: same seed, same
validation split, same initial set and model), the best mean AUBC wins. When every
strategy lost to random on some seed, the recommendation is ``random``: active learning
did not pay off reliably on this data, and saying so saves the team a false promise.

Evidence per strategy: AUBC mean and spread over seeds, the per-seed AUBC difference to
random, the seeds it lost on, and the labels it needed to reach random's final accuracy
(the saving, when fewer than random's budget).

Training modes are candidates too: a simulation over several modes
(``simulate --semi-supervised none,fixmatch``, ``simulation.modes``) names its runs
``<strategy>+<mode>``, judged against supervised random like any strategy; the chosen
mode comes back in ``training_mode`` and in the settings lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from connector.simulation.metrics import labels_to_reach
from connector.simulation.modes import split_candidate

#: The strategies ``simulate --recommend`` compares by default: random (the baseline),
#: the per-item uncertainty scores, BADGE, and coreset. All cost one deterministic pass
#: over the pool (no MC dropout), so a round costs about what random's does.
CANDIDATES = ("random", "entropy", "margin", "least_confidence", "badge", "coreset")


def _evidence(runs: list[dict[str, Any]], random_runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    aubcs = np.array([r["aubc"] for r in runs])
    diffs = {r["seed"]: r["aubc"] - random_runs[r["seed"]]["aubc"] for r in runs}
    reach = {
        r["seed"]: labels_to_reach(
            r["labels"], r["accuracy"], random_runs[r["seed"]]["final_accuracy"]
        )
        for r in runs
    }
    reached = [v for v in reach.values() if v is not None]
    return {
        "strategy": runs[0]["strategy"],
        "n_seeds": len(runs),
        "aubc_mean": float(aubcs.mean()),
        "aubc_std": float(aubcs.std(ddof=1)) if len(runs) > 1 else 0.0,
        "aubc_minus_random": {str(s): round(d, 4) for s, d in diffs.items()},
        "seeds_lost_to_random": [s for s, d in diffs.items() if d < 0],
        "labels_to_random_final": {str(s): v for s, v in reach.items()},
        "labels_to_random_final_mean": float(np.mean(reached)) if reached else None,
        "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in runs])),
    }


def recommend(result: dict[str, Any]) -> dict[str, Any]:
    """The recommendation for a simulation ``result`` (``run_simulation``'s value), which
    must include ``random``. JSON-ready: ``strategy``, ``reason``, ``settings`` (the TOML
    lines to use), ``random_budget`` and ``evidence`` (one row per strategy, best first)."""
    runs = result["runs"]
    random_runs = {r["seed"]: r for r in runs if r["strategy"] == "random"}
    if not random_runs:
        raise ValueError("a recommendation needs random among the strategies, as the baseline")
    order = list(dict.fromkeys(r["strategy"] for r in runs))
    rows = [_evidence([r for r in runs if r["strategy"] == s], random_runs) for s in order]
    rows.sort(key=lambda row: -row["aubc_mean"])
    budget = max(r["labels"][-1] for r in random_runs.values())
    safe = [r for r in rows if r["strategy"] != "random" and not r["seeds_lost_to_random"]]
    n_seeds = len(random_runs)
    if safe:
        best = safe[0]
        gain = best["aubc_mean"] - next(r for r in rows if r["strategy"] == "random")["aubc_mean"]
        reach = best["labels_to_random_final_mean"]
        reason = (
            f"{best['strategy']} beat or tied random on all {n_seeds} seed(s), by "
            f"{gain:+.4f} AUBC on average"
            + (
                f", and reached random's final accuracy with {reach:.0f} labels of {budget}"
                if reach
                else ""
            )
        )
        choice = best["strategy"]
    else:
        choice = "random"
        reason = (
            f"every strategy lost to random on at least one of {n_seeds} seed(s): active "
            "learning did not pay off reliably on this data"
        )
    strategy, mode = split_candidate(choice)
    name, _, params = strategy.partition(":")
    settings = f'[strategy]\nname = "{name}"'
    if params:
        kv = (p.partition("=") for p in params.split(":"))
        settings += "\nparams = { " + ", ".join(f'{k} = "{v}"' for k, _, v in kv) + " }"
    model = [f'semi_supervised = "{mode}"'] if mode != "supervised" else []
    pretext = result.get("config", {}).get("pretraining", {}).get("pretext", "none")
    if pretext != "none":  # every run of the simulation pre-trained so
        model.append(f'pretrain = "{pretext}"')
    if model:
        settings += "\n\n[model]\n" + "\n".join(model)
    return {
        "strategy": strategy,
        "candidate": choice,
        "training_mode": mode,
        "reason": reason,
        "settings": settings,
        "random_budget": budget,
        "evidence": rows,
    }


def recommendation_markdown(rec: dict[str, Any], source: str) -> str:
    """The recommendation as a short page for the team (``recommendation.md``)."""
    lines = [
        f"# Strategy recommendation for {source}",
        "",
        f"Use **{rec['strategy']}** ({rec['training_mode']} training): {rec['reason']}.",
        "",
        "```toml",
        rec["settings"],
        "```",
        "",
        "| strategy | AUBC mean | ± (sd over seeds) | AUBC - random per seed | lost to random on "
        f"seeds | labels to random's final accuracy (budget {rec['random_budget']}) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rec["evidence"]:
        per_seed = ", ".join(f"{s}: {d:+.4f}" for s, d in r["aubc_minus_random"].items())
        lost = ", ".join(map(str, r["seeds_lost_to_random"])) or "none"
        reach = ", ".join(
            f"{s}: {v if v is not None else '-'}" for s, v in r["labels_to_random_final"].items()
        )
        lines.append(
            f"| {r['strategy']} | {r['aubc_mean']:.4f} | {r['aubc_std']:.4f} | {per_seed} | "
            f"{lost} | {reach} |"
        )
    return "\n".join(lines) + "\n"
