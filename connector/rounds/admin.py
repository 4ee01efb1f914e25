"""Admin commands, the CLI's half: each is checked against the state db and the settings,
then journaled for the daemon, which applies it at its next safe point
(``rounds.commands``).

A check raises ``BadCommand`` naming what is wrong and the fix, before anything is
written: a rejected command leaves no trace. What a command changes is decided when the
daemon applies it (the state may have moved on since), and recorded in the journal with
who asked, when, and the outcome (``al-connector audit``).
"""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from connector.contracts.errors import BadCommand, ConfigError
from connector.rounds import stopping
from connector.rounds.context import (
    NEXT_BATCH,
    NEXT_STRATEGY,
    OVERRIDE_BATCH,
    OVERRIDE_STRATEGY,
    PAUSED,
    read_overrides,
)
from connector.rounds.plan import check_strategy, resolve_plan
from connector.settings import Settings
from connector.state import Phase, StateDB, utcnow

#: Item statuses each command accepts.
INCLUDABLE = ("discovered", "excluded")  # including an excluded item takes it back
EXCLUDABLE = ("discovered", "excluded", "missing")
REQUEUABLE = ("queued", "skipped", "invalid", "missing")
#: Phases of a round whose push is over: what a rollback can take back.
ROLLBACK_PHASES = (Phase.WAIT, Phase.DONE)
#: Phases before the selection is frozen.
UNFROZEN = (Phase.INGEST, Phase.TRAIN, Phase.SCORE, Phase.SELECT)


@dataclass
class Checked:
    """A command that passed its checks: what to journal, and what to tell the admin."""

    command: str
    args: dict[str, Any]
    says: str
    notes: list[str] = field(default_factory=list)


def current_user() -> str:
    """The OS user running the command (the audit trail's "who")."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (e.g. a container without a passwd entry)
        return "unknown"


def journal(state: StateDB, checked: Checked, user: str | None = None) -> int:
    return state.journal_command(checked.command, checked.args, user or current_user())


# --------------------------------------------------------------------- rounds
def check_start_now(state: StateDB) -> Checked:
    notes = []
    if state.get_meta(PAUSED) == "1":
        notes.append("rounds are paused: the round starts once you run `al-connector round resume`")
    current = state.current_round()
    if current is not None and current.phase is Phase.FAILED:
        notes.append(
            f"round {current.round} FAILED ({current.error}); it blocks new rounds: fix the "
            "cause and restart, or close it with `al-connector round skip`"
        )
    elif current is not None and current.phase not in (Phase.WAIT, Phase.DONE):
        notes.append(
            f"round {current.round} is at {current.phase.value}: the next round starts once "
            "it is waiting for labels"
        )
    return Checked("start-now", {}, "start the next round now, without waiting for labels", notes)


def check_pause(state: StateDB) -> Checked:
    notes = ["already paused"] if state.get_meta(PAUSED) == "1" else []
    return Checked(
        "pause",
        {},
        "no new round starts (labels are still ingested) until `round resume`",
        notes,
    )


def check_resume(state: StateDB) -> Checked:
    record = stopping.stopped(state)
    paused = state.get_meta(PAUSED) == "1"
    if record is None:
        notes = [] if paused else ["rounds are not paused or stopped"]
        return Checked("resume", {}, "rounds start again on their triggers", notes)
    criterion = record["criterion"]
    setting = "plateau_rounds" if criterion == "plateau" else criterion
    again = (
        "a plateau is judged again over the rounds after this one"
        if criterion == "plateau"
        else f"it stays off while stopping.{setting} is "
        f"{(record.get('figures') or {}).get(setting)}; change it and restart to re-arm it"
    )
    return Checked(
        "resume",
        {},
        f"lift the stop of round {record['round']} ({record['message']}): the round goes on "
        f"from {record['resume_phase']} and rounds start again on their triggers",
        [f"{criterion} is waived: {again}"],
    )


def check_skip(state: StateDB) -> Checked:
    current = state.current_round()
    if current is None or current.phase is Phase.DONE:
        raise BadCommand("there is no open round to skip; `al-connector rounds list` shows them")
    if current.round == 0 and current.phase in UNFROZEN:
        raise BadCommand(
            "round 0 has not frozen its selection yet, and it holds the validation split "
            "that every round's metrics need; let it push, then skip it"
        )
    return Checked(
        "skip",
        {"round": current.round},
        f"close round {current.round} (at {current.phase.value}) without waiting for its "
        "batch, and start the next one",
    )


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value is read as JSON when it is (numbers, true, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BadCommand(f"--param {pair!r} is not KEY=VALUE, e.g. --param beta=2")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def check_set(
    settings: Settings,
    state: StateDB,
    *,
    strategy: str | None,
    params: Mapping[str, Any],
    batch_size: int | None,
    persist: bool,
) -> Checked:
    if strategy is None and not params and batch_size is None:
        raise BadCommand("round set needs --strategy, --param or --batch-size")
    if batch_size is not None and batch_size < 1:
        raise BadCommand(f"--batch-size must be at least 1, got {batch_size}")
    args = {
        "strategy": strategy,
        "params": dict(params) or None,
        "batch_size": batch_size,
        "persist": persist,
    }
    name = strategy or read_overrides(state).strategy or settings.strategy.name
    try:
        check_strategy(name, dict(params), setting="`round set --strategy`")
        resolve_plan(settings, read_overrides(state, overlay(state, args).get))
    except ConfigError as exc:
        raise BadCommand(str(exc)) from None
    what = ", ".join(
        part
        for part in (
            f"strategy {name}" if strategy or params else "",
            " ".join(f"{k}={v}" for k, v in sorted(params.items())),
            f"batch size {batch_size}" if batch_size is not None else "",
        )
        if part
    )
    scope = "from now on" if persist else "for the next round only"
    return Checked("set", args, f"{what} {scope}")


@dataclass
class Overlay:
    """The meta values a ``set`` command would leave behind, over the stored ones."""

    state: StateDB
    values: dict[str, str | None]

    def get(self, key: str) -> str | None:
        return self.values[key] if key in self.values else self.state.get_meta(key)


def overlay(state: StateDB, args: Mapping[str, Any]) -> Overlay:
    """What a ``set`` command with ``args`` writes (the daemon applies exactly this)."""
    strategy_key, batch_key = (
        (OVERRIDE_STRATEGY, OVERRIDE_BATCH) if args.get("persist") else (NEXT_STRATEGY, NEXT_BATCH)
    )
    raw = state.get_meta(strategy_key)
    spec: dict[str, Any] = dict(json.loads(raw)) if raw else {}
    values: dict[str, str | None] = {}
    if args.get("strategy"):
        spec = {"name": args["strategy"], "params": args.get("params")}
    elif args.get("params"):
        spec = {**spec, "params": {**(spec.get("params") or {}), **args["params"]}}
    if args.get("strategy") or args.get("params"):
        values[strategy_key] = json.dumps(spec, sort_keys=True)
    if args.get("batch_size") is not None:
        values[batch_key] = str(int(args["batch_size"]))
    return Overlay(state, values)


def check_rollback(state: StateDB, number: int) -> Checked:
    rnd = state.get_round(number)
    if rnd is None:
        known = [r.round for r in state.rounds()]
        have = f"rounds {known[0]}..{known[-1]}" if known else "no rounds yet"
        raise BadCommand(f"round {number} does not exist ({have}); `al-connector rounds list`")
    if rnd.phase not in ROLLBACK_PHASES:
        raise BadCommand(
            f"round {number} is at {rnd.phase.value}; a rollback takes back a round whose "
            "push is over (WAIT or DONE): wait for it, or `al-connector round skip` it first"
        )
    open_tasks = state.withdrawable(number)
    if not open_tasks:
        done, total = state.batch_progress(number)
        raise BadCommand(
            f"round {number} has nothing to withdraw: {done} of its {total} tasks are "
            "annotated and the rest (if any) are validation tasks, which stay"
        )
    return Checked(
        "rollback",
        {"round": number},
        f"delete round {number}'s {len(open_tasks)} unannotated training tasks in Label "
        "Studio and put their items back in the pool (annotations already made are kept)",
    )


# ---------------------------------------------------------------------- items
def read_keys(keys: Sequence[str], from_file: str | None, text: str | None) -> list[str]:
    """Keys from the command line and a file (one a line, ``#`` comments), deduplicated."""
    out = list(keys)
    if text is not None:
        for line in text.splitlines():
            key = line.split("#", 1)[0].strip()
            if key:
                out.append(key)
    out = list(dict.fromkeys(k.strip() for k in out if k.strip()))
    if not out:
        where = f" ({from_file} has none)" if from_file else ""
        raise BadCommand(f"no keys given{where}; name them, or use --from-file FILE")
    return out


def _check_keys(state: StateDB, keys: Sequence[str], allowed: Sequence[str], verb: str) -> None:
    rows = state.items_by_key(keys)
    unknown = [k for k in keys if k not in rows]
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise BadCommand(
            f"not in the pool: {shown}. Keys are object keys relative to storage.prefix, as "
            "`al-connector items show KEY` and `export` print them; nothing was changed"
        )
    wrong = [(k, rows[k]) for k in keys if rows[k]["status"] not in allowed]
    if wrong:
        shown = ", ".join(
            f"{k} ({r['status']}" + (f" in round {r['round']})" if r["round"] is not None else ")")
            for k, r in wrong[:5]
        )
        raise BadCommand(
            f"cannot {verb}: {shown}; {verb} takes items that are "
            f"{' or '.join(allowed)}; nothing was changed"
        )


def check_include(state: StateDB, keys: Sequence[str]) -> Checked:
    _check_keys(state, keys, INCLUDABLE, "include")
    return Checked(
        "include",
        {"keys": list(keys)},
        f"put {len(keys)} item(s) into the next batch, ahead of the strategy's picks",
    )


def check_exclude(state: StateDB, keys: Sequence[str]) -> Checked:
    _check_keys(state, keys, EXCLUDABLE, "exclude")
    return Checked("exclude", {"keys": list(keys)}, f"never select {len(keys)} item(s)")


def parse_age(text: str) -> timedelta:
    """``2d``, ``12h``, ``30m``, ``45s`` as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", text)
    if not match:
        raise BadCommand(f"--older-than {text!r} is not an age like 2d, 12h, 30m or 45s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})


def stalled_keys(state: StateDB, older_than: str) -> list[str]:
    cutoff = utcnow() - parse_age(older_than)
    keys = state.stalled_items(cutoff.isoformat())
    if not keys:
        raise BadCommand(f"no task has been open for more than {older_than}; nothing to requeue")
    return keys


def check_requeue(state: StateDB, keys: Sequence[str]) -> Checked:
    _check_keys(state, keys, REQUEUABLE, "requeue")
    return Checked(
        "requeue",
        {"keys": list(keys)},
        f"re-send {len(keys)} item(s): delete each one's open task in Label Studio and push "
        "a new one, served after the round's open tasks (an item_requeued alert each)",
    )
