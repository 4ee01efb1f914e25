"""Stopping criteria: when more labels buy too little to keep pushing batches.

``[stopping]`` names four criteria; any one that fires stops the rounds:

- ``max_rounds``: that many rounds have run (judged while the last one waits for labels);
- ``max_labels``: that many items are labeled, the validation split included;
- ``target_accuracy``: the latest validation accuracy reached the target;
- ``plateau_rounds`` / ``plateau_min_gain``: the best validation accuracy of the last
  ``plateau_rounds`` trained rounds is less than ``plateau_min_gain`` above the best one
  before them (a learning curve gone flat; cf. Zhu et al. 2008, "Confidence-based
  stopping criteria for active learning", and the plateau rules of early stopping).

The engine asks twice per round: right after TRAIN (a stop there pushes nothing: the
round holds at SCORE) and while the round waits for labels (no new round starts). A stop
puts the round at STOPPED with a ``stopped`` alert, and is kept in the meta key
``stopped`` until an admin runs ``al-connector round resume``. Resuming waives the
criterion that fired while its setting keeps the value it fired at (raise it and restart
to re-arm it); a plateau is judged again over the rounds after the resume only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from connector.settings import StoppingSettings
from connector.state import Phase, Round, StateDB

#: Meta key: the stop in force (JSON: criterion, figures, message, round, resume_phase,
#: at), absent while rounds run.
STOPPED = "stopped"
#: Meta key: criteria an admin waived by resuming (JSON: name -> {value, round}).
WAIVED = "stopping_waived"
CRITERIA = ("max_rounds", "max_labels", "target_accuracy", "plateau_rounds")


@dataclass(frozen=True)
class Stop:
    criterion: str
    figures: dict[str, Any]
    message: str


def _waived(waivers: dict[str, Any], name: str, value: Any) -> bool:
    w = waivers.get(name)
    return w is not None and w.get("value") == value


def evaluate(
    cfg: StoppingSettings,
    accuracy: Sequence[tuple[int, float]],
    labeled: int,
    rounds_run: int,
    *,
    waiting: bool,
    waivers: dict[str, Any] | None = None,
) -> tuple[Stop | None, dict[str, Any]]:
    """The first criterion that fires (or None), and every configured one's figures.

    ``accuracy``: ``(round, validation accuracy)`` of the trained rounds, in order.
    ``labeled``: items labeled now. ``rounds_run``: rounds started so far. ``waiting``:
    asked while the latest round waits for labels (only then does ``max_rounds`` count:
    its last round still pushes).
    """
    waivers = waivers or {}
    figures: dict[str, Any] = {}
    fired: list[Stop] = []
    if cfg.max_rounds is not None:
        figures["max_rounds"] = {"rounds": rounds_run, "max_rounds": cfg.max_rounds}
        if (
            waiting
            and rounds_run >= cfg.max_rounds
            and not _waived(waivers, "max_rounds", cfg.max_rounds)
        ):
            fired.append(
                Stop(
                    "max_rounds",
                    figures["max_rounds"],
                    f"{rounds_run} rounds have run; stopping.max_rounds is {cfg.max_rounds}",
                )
            )
    if cfg.max_labels is not None:
        figures["max_labels"] = {"labeled": labeled, "max_labels": cfg.max_labels}
        if labeled >= cfg.max_labels and not _waived(waivers, "max_labels", cfg.max_labels):
            fired.append(
                Stop(
                    "max_labels",
                    figures["max_labels"],
                    f"{labeled} items are labeled; stopping.max_labels is {cfg.max_labels}",
                )
            )
    if cfg.target_accuracy is not None:
        latest = accuracy[-1] if accuracy else None
        figures["target_accuracy"] = {
            "accuracy": latest[1] if latest else None,
            "round": latest[0] if latest else None,
            "target_accuracy": cfg.target_accuracy,
        }
        if (
            latest is not None
            and latest[1] >= cfg.target_accuracy
            and not _waived(waivers, "target_accuracy", cfg.target_accuracy)
        ):
            fired.append(
                Stop(
                    "target_accuracy",
                    figures["target_accuracy"],
                    f"validation accuracy {latest[1]:.3f} in round {latest[0]} reached "
                    f"stopping.target_accuracy {cfg.target_accuracy:g}",
                )
            )
    if cfg.plateau_rounds is not None:
        stop, figures["plateau"] = _plateau(cfg, accuracy, waivers)
        if stop is not None:
            fired.append(stop)
    return (fired[0] if fired else None), figures


def _plateau(
    cfg: StoppingSettings, accuracy: Sequence[tuple[int, float]], waivers: dict[str, Any]
) -> tuple[Stop | None, dict[str, Any]]:
    n = cfg.plateau_rounds
    assert n is not None
    since = (waivers.get("plateau_rounds") or {}).get("round", -1)
    judged = [(r, a) for r, a in accuracy if r > since]
    figures: dict[str, Any] = {
        "plateau_rounds": n,
        "plateau_min_gain": cfg.plateau_min_gain,
        "trained_rounds": len(judged),
    }
    if since >= 0:
        figures["judged_after_round"] = since
    if len(judged) <= n:
        return None, figures
    before = max(a for _, a in judged[:-n])
    window = judged[-n:]
    gain = max(a for _, a in window) - before
    figures.update(
        best_before=before,
        window=[[r, a] for r, a in window],
        gain=gain,
    )
    if gain >= cfg.plateau_min_gain:
        return None, figures
    return (
        Stop(
            "plateau",
            figures,
            f"the last {n} trained rounds gained {gain:+.4f} over the best accuracy before "
            f"them ({before:.3f}), less than stopping.plateau_min_gain {cfg.plateau_min_gain:g}",
        ),
        figures,
    )


def _setting_of(criterion: str) -> str:
    return "plateau_rounds" if criterion == "plateau" else criterion


# ------------------------------------------------------------ reading the state
def accuracy_history(state: StateDB) -> list[tuple[int, float]]:
    out = []
    for rnd in state.rounds():
        acc = (rnd.metrics.get("validation") or {}).get("accuracy")
        if acc is not None and not math.isnan(acc):  # NaN: an empty validation split
            out.append((rnd.round, float(acc)))
    return out


def waivers(state: StateDB) -> dict[str, Any]:
    raw = state.get_meta(WAIVED)
    return dict(json.loads(raw)) if raw else {}


def stopped(state: StateDB) -> dict[str, Any] | None:
    """The stop in force, or None while rounds run."""
    raw = state.get_meta(STOPPED)
    return dict(json.loads(raw)) if raw else None


def check(cfg: StoppingSettings, state: StateDB, rnd: Round) -> tuple[Stop | None, dict[str, Any]]:
    """``evaluate`` on the state db as it is, for round ``rnd``."""
    waiting = rnd.phase in (Phase.WAIT, Phase.DONE)
    return evaluate(
        cfg,
        accuracy_history(state),
        state.count_items().get("labeled", 0),
        rnd.round + 1,
        waiting=waiting,
        waivers=waivers(state),
    )


def waiver_after(waived: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``waived`` plus the criterion of the stop ``record``, off at the value it fired at."""
    name = _setting_of(str(record["criterion"]))
    value = (record.get("figures") or {}).get(name)
    return {**waived, name: {"value": value, "round": int(record["round"])}}


def state_of(cfg: StoppingSettings | None, state: StateDB) -> dict[str, Any]:
    """The stop in force (or None) and every configured criterion's figures now."""
    current = state.current_round()
    figures: dict[str, Any] = {}
    if cfg is not None and current is not None:
        _, figures = check(cfg, state, current)
    return {"stopped": stopped(state), "criteria": figures}
