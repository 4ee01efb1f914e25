"""Admin commands, the daemon's half: applying journaled commands at a safe point.

``RoundEngine.step`` calls ``apply_pending`` first, before it resumes or starts a round,
so a command never lands in the middle of a phase or a push. Commands apply in the
order they were journaled. Each one's state change commits together with its
``applied`` mark; one that touches Label Studio (rollback, requeue) is written so that
applying it again after a crash finds its finished part done. A service that is down
leaves the command pending for the next safe point; any other error marks it failed,
with the error, in the audit trail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from connector.contracts.errors import ConfigError, ServiceUnavailable
from connector.contracts.ports import TaskToPush
from connector.rounds import stopping
from connector.rounds.admin import REQUEUABLE, ROLLBACK_PHASES, UNFROZEN, overlay
from connector.rounds.context import PAUSED, START_NOW, RoundContext, read_overrides
from connector.rounds.plan import resolve_plan
from connector.state import AlertKind, Phase
from connector.state.admin import PENDING

log = logging.getLogger(__name__)

Applier = Callable[[RoundContext, int, dict[str, Any]], None]


class Refused(Exception):
    """The command cannot apply to the state as it is now (it changed since the check)."""


def apply_pending(ctx: RoundContext) -> list[int]:
    """Apply every pending command in journal order; returns the ids applied or failed."""
    done = []
    for cmd in ctx.state.commands(PENDING):
        number = int(cmd["id"])
        if not ctx.state.claim_command(number):
            continue  # another process applies it
        user = cmd["user"]
        try:
            APPLIERS[cmd["command"]](ctx, number, {**cmd["args"], "_user": user})
        except ServiceUnavailable as exc:
            ctx.state.release_command(number, f"waiting: {exc}")
            log.warning("command #%d (%s) waits for the next safe point: %s", number, user, exc)
            break  # later commands wait too: they apply in order
        except Exception as exc:
            why = str(exc) if isinstance(exc, (Refused, ConfigError)) else repr(exc)
            ctx.state.finish_command(number, f"not applied: {why}", ok=False)
            log.error("command #%d %s by %s not applied: %s", number, cmd["command"], user, why)
        else:
            applied = ctx.state.command(number)
            log.info(
                "command #%d %s by %s: %s",
                number,
                cmd["command"],
                user,
                applied["result"] if applied else "?",
            )
        done.append(number)
    return done


def _start_now(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    ctx.state.finish_command(
        number, "the next round starts as soon as the current one waits", set_meta={START_NOW: "1"}
    )


def _pause(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    ctx.state.finish_command(number, "paused: no new round starts", set_meta={PAUSED: "1"})


def _resume(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    """Unpause, and lift a stop: the stopped round goes back to the phase it stopped at,
    and the criterion that fired is waived at the value it fired at (``rounds.stopping``)."""
    record = stopping.stopped(ctx.state)
    if record is None:
        ctx.state.finish_command(number, "resumed", set_meta={PAUSED: "0"})
        return
    rnd = ctx.state.get_round(int(record["round"]))
    if rnd is not None and rnd.phase is Phase.STOPPED:
        ctx.state.set_phase(rnd.round, Phase(record["resume_phase"]))
    waived = stopping.waiver_after(stopping.waivers(ctx.state), record)
    ctx.state.finish_command(
        number,
        f"resumed; the stop by {record['criterion']} in round {record['round']} is lifted "
        f"and {record['criterion']} waived at its value",
        set_meta={PAUSED: "0", stopping.WAIVED: json.dumps(waived, sort_keys=True)},
        delete_meta=[stopping.STOPPED],
    )
    ctx.state.resolve_alerts(AlertKind.STOPPED.value)


def _set(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    values = overlay(ctx.state, args)
    # Settings may have changed since the check: the plan must still resolve.
    plan = resolve_plan(ctx.settings, read_overrides(ctx.state, values.get))
    scope = "from now on" if args.get("persist") else "for the next round"
    ctx.state.finish_command(
        number,
        f"{plan.describe()} {scope}",
        set_meta={k: v for k, v in values.values.items() if v is not None},
    )


def _skip(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    current = ctx.state.current_round()
    if current is None or current.round != args["round"]:
        raise Refused(f"round {args['round']} is no longer the current round")
    if current.phase.value == "DONE":
        raise Refused(f"round {current.round} is already closed")
    if current.round == 0 and current.phase in UNFROZEN:
        raise Refused("round 0 holds the validation split; it cannot close before its push")
    ctx.state.skip_round(
        number,
        current.round,
        START_NOW,
        f"round {current.round} closed at {current.phase.value}; the next one starts now",
    )


def _rollback(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    round_number = int(args["round"])
    rnd = ctx.state.get_round(round_number)
    if rnd is None or rnd.phase not in ROLLBACK_PHASES:
        raise Refused(f"round {round_number} is not waiting or done")
    pairs = ctx.state.withdrawable(round_number)
    if not pairs:
        raise Refused(f"round {round_number} has nothing left to withdraw")
    gone = set(ctx.ports.labeling.withdraw_tasks([t for _, t in pairs]))
    items = [item for item, task in pairs if task in gone]
    kept = len(pairs) - len(items)
    note = f"; {kept} annotated meanwhile, kept" if kept else ""
    ctx.state.withdraw_items(
        number,
        round_number,
        items,
        f"round {round_number}: {{n}} unannotated tasks deleted, their items back in the pool"
        + note,
    )


def _include(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    keys = list(args["keys"])
    ctx.state.pin_items(number, keys, f"{{n}} of {len(keys)} item(s) pinned into the next batch")


def _exclude(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    keys = list(args["keys"])
    ctx.state.exclude_items(
        number,
        keys,
        f"excluded by {args['_user']} (command #{number})",
        f"{{n}} of {len(keys)} item(s) excluded",
    )


def _requeue(ctx: RoundContext, number: int, args: dict[str, Any]) -> None:
    """Withdraw each item's open task and push a new one in the current round (the newest
    task id: served after the round's other open tasks), under its model version (without
    a prelabel: no model is loaded here)."""
    current = ctx.state.current_round()
    if current is None:
        raise Refused("no round has pushed anything yet")
    version = current.model_version or ctx.model_version(current)
    rows = ctx.state.items_by_key(list(args["keys"]))
    requeued, left = [], []
    for key in args["keys"]:
        row = rows.get(key)
        alert_key = f"requeue:{key}:{number}"
        if ctx.state.alert_recorded(alert_key):  # done before a crash or an outage
            requeued.append(key)
            continue
        if row is None or row["status"] not in REQUEUABLE:
            left.append(f"{key} ({row['status'] if row else 'gone'})")
            continue
        old = row["task_id"]
        if old is not None and int(old) not in ctx.ports.labeling.withdraw_tasks(
            [int(old)], skipped_too=True
        ):
            left.append(f"{key} (annotated meanwhile)")
            continue
        task = TaskToPush(
            item_id=key,
            image_url=ctx.ports.store.url_for(key),
            round=current.round,
            split="validation" if row["split"] == "validation" else "train",
            priority=0,
        )
        new = ctx.ports.labeling.push([task], version)[key]
        message = (
            f"item {key} re-queued by {args['_user']} (command #{number}): task {old} "
            f"withdrawn, task {new} pushed in round {current.round}"
        )
        ctx.state.record_requeue(current.round, key, new, alert_key=alert_key, message=message)
        requeued.append(key)
    result = f"{len(requeued)} item(s) re-queued" + (
        f"; left alone: {', '.join(left)}" if left else ""
    )
    ctx.state.finish_command(number, result, ok=bool(requeued))


APPLIERS: dict[str, Applier] = {
    "start-now": _start_now,
    "pause": _pause,
    "resume": _resume,
    "set": _set,
    "skip": _skip,
    "rollback": _rollback,
    "include": _include,
    "exclude": _exclude,
    "requeue": _requeue,
}
