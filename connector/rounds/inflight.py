"""An import that a crash cut off may still land: PUSH waits for it before re-importing.

Label Studio keeps running an import request after its client died. With SQLite, its
bulk import sleeps and retries on "database is locked" (3 s, 6 s, 12 s, ...), so the
dead client's tasks can commit seconds after the daemon restarted, reconciled by item
id, found nothing and imported the items again: two tasks per item, the late copy
without its predictions (docs/reliability.md). No reconcile can see a request still
running on the server, so PUSH marks each chunk as in flight before it posts it and
clears the mark once the tasks are recorded, or when the call raised (the process
lived: the adapter reconciled and de-duplicated what it could, and a Label Studio outage
must not add a wait). A PUSH that finds a mark (the previous process died inside that
chunk) looks for the chunk's tasks until they
have all landed, then adopts them (the push repairs missing predictions), or until
``label_studio.import_settle_seconds`` after the cut-off request began; only then does
it import again. It waits by deferring the phase (the round's ``retry_at``), not by
sleeping, so the daemon's other jobs and a stop signal are not held up.

The window bounds, not removes, the risk: Label Studio's retry has no useful upper
bound. A later commit is still contained by the poll (``StateDB._apply_states``): the
recorded task rules and the extra one is withdrawn.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from connector.rounds.context import RoundContext
from connector.state import Round, iso, utcnow

log = logging.getLogger(__name__)

META_KEY = "push_in_flight"
#: How often a waiting PUSH looks again (the round job's tick may make it later).
RECHECK_S = 1.0


def mark(ctx: RoundContext, rnd: Round, item_ids: Sequence[str]) -> None:
    """Before an import call: these items' tasks may exist from now on."""
    record = {"round": rnd.round, "items": list(item_ids), "since": time.time()}
    ctx.state.set_meta(META_KEY, json.dumps(record))


def clear(ctx: RoundContext) -> None:
    ctx.state.set_meta(META_KEY, "")


def must_wait(ctx: RoundContext, rnd: Round) -> bool:
    """True if an import cut off in this round may still land: the phase is deferred
    (see the module docstring). False when there is none, it landed, or its window is
    over; PUSH then goes on (and reconciles by item id as always)."""
    raw = ctx.state.get_meta(META_KEY)
    if not raw:
        return False
    record = json.loads(raw)
    items = [str(i) for i in record.get("items", [])]
    left = float(record.get("since", 0)) + ctx.cfg.import_settle_seconds - time.time()
    if record.get("round") != rnd.round or not items or left <= 0:
        return False
    found = ctx.ports.labeling.existing_tasks(items)
    if len(found) == len(items):
        log.info(
            "round %d: the %d tasks of an import cut off by a crash have landed; adopting them",
            rnd.round,
            len(items),
        )
        clear(ctx)
        return False
    if record.get("logged") is None:
        log.warning(
            "round %d: a push was cut off inside an import of %d items (e.g. %s); Label "
            "Studio may still commit it, so the push waits up to %.0f s more before "
            "importing them again (label_studio.import_settle_seconds)",
            rnd.round,
            len(items),
            items[0],
            left,
        )
        record["logged"] = True
        ctx.state.set_meta(META_KEY, json.dumps(record))
    retry_at = iso(utcnow() + timedelta(seconds=min(RECHECK_S, left)))
    assert retry_at is not None
    ctx.state.defer_phase(rnd.round, retry_at)
    return True
