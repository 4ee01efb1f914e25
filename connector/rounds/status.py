"""What ``al-connector status`` shows: the phase and its age, paused, the stopping state,
open alerts, the queue's age, the last rounds' accuracy; as a dict (``--json``) and as
lines for people. Reads the state db only: it works while the daemon is stopped.
"""

from __future__ import annotations

from typing import Any

from connector.rounds import report
from connector.rounds.context import PAUSED, describe_overrides
from connector.settings import Settings
from connector.state import StateDB, parse_iso, utcnow

#: Rounds whose accuracy ``status`` lists (all of them are in ``--json``'s ``rounds``).
LAST_ROUNDS = 5


def _age_s(stamp: str | None) -> float | None:
    at = parse_iso(stamp)
    return None if at is None else round((utcnow() - at).total_seconds(), 1)


def describe(settings: Settings, state: StateDB) -> dict[str, Any]:
    summary = report.collect(state, settings.stopping)
    current = state.current_round()
    by_kind, newest = state.open_alerts()
    queued, oldest = state.queue_age()
    out: dict[str, Any] = {
        "items": state.count_items(),
        "rounds": summary["rounds"],
        "last_rounds": [
            {k: r[k] for k in ("round", "phase", "n_train", "validation_accuracy")}
            for r in summary["rounds"][-LAST_ROUNDS:]
        ],
        "paused": state.get_meta(PAUSED) == "1",
        "stopped": summary["stopping"]["stopped"],
        "stopping": summary["stopping"],
        "alerts": {
            "open": sum(by_kind.values()),
            "by_kind": by_kind,
            "newest": [
                {k: a[k] for k in ("id", "kind", "severity", "round", "created_at", "message")}
                for a in newest
            ],
        },
        "queue": {"queued": queued, "oldest_queued_at": oldest, "oldest_age_s": _age_s(oldest)},
        "overrides": describe_overrides(state),
        "pending_commands": state.commands("pending"),
        "current": None,
    }
    if current is not None:
        done, total = state.batch_progress(current.round)
        out["current"] = {
            "round": current.round,
            "phase": current.phase.value,
            "phase_since": current.phase_at.isoformat(),
            "phase_age_s": _age_s(current.phase_at.isoformat()),
            "batch_done": done,
            "batch_total": total,
            "error": current.error,
        }
    return out


def age(seconds: float | None) -> str:
    """``42 s``, ``7 min``, ``3.5 h``, ``2.1 d``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def lines(out: dict[str, Any]) -> list[str]:
    """``describe``'s dict as a person reads it."""
    text = ["items: " + ", ".join(f"{k} {v}" for k, v in out["items"].items() if v)]
    c = out["current"]
    if c is not None:
        text.append(
            f"round {c['round']}: {c['phase']} for {age(c['phase_age_s'])}, batch "
            f"{c['batch_done']}/{c['batch_total']} done"
            + (f", error: {c['error']}" if c["error"] else "")
        )
    q = out["queue"]
    if q["queued"]:
        text.append(f"queue: {q['queued']} tasks open, the oldest for {age(q['oldest_age_s'])}")
    if out["paused"]:
        text.append("paused: no new round starts until `al-connector round resume`")
    text += stopping_lines(out["stopping"])
    for r in out["last_rounds"]:
        acc = r["validation_accuracy"]
        text.append(
            f"  round {r['round']:>3} {r['phase']:<7} train labels {r['n_train'] or 0:>5}  "
            f"validation accuracy {'-' if acc is None else f'{acc:.3f}'}"
        )
    alerts = out["alerts"]
    if alerts["open"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(alerts["by_kind"].items()))
        text.append(f"alerts: {alerts['open']} ({kinds}); newest:")
        text += [
            f"  #{a['id']} {a['kind']} ({a['severity']}, {a['created_at']}): {a['message']}"
            for a in alerts["newest"][:3]
        ]
    else:
        text.append("alerts: none")
    for scope, values in out["overrides"].items():
        if values:
            text.append(f"overrides ({scope.replace('_', ' ')}): {values}")
    for cmd in out["pending_commands"]:
        text.append(
            f"pending: #{cmd['id']} {cmd['command']} by {cmd['user']} ({cmd['created_at']})"
        )
    return text


def stopping_lines(state: dict[str, Any]) -> list[str]:
    record = state.get("stopped")
    if record is not None:
        return [
            f"STOPPED: round {record['round']} stopped by {record['criterion']} "
            f"({_figures(record['figures'])}) at {record['at']}; nothing more is pushed "
            "until `al-connector round resume`"
        ]
    criteria = state.get("criteria") or {}
    if not criteria:
        return ["stopping: no criterion set ([stopping] in the settings)"]
    return ["stopping: running; " + "; ".join(f"{k} {_figures(v)}" for k, v in criteria.items())]


def _figures(figures: dict[str, Any]) -> str:
    shown = []
    for key, value in figures.items():
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif not isinstance(value, (list, dict)):
            shown.append(f"{key} {value}")
    return ", ".join(shown)
