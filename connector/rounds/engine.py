"""The round engine: INGEST -> TRAIN -> SCORE -> SELECT -> PUSH -> WAIT, with FAILED as
the way out when a phase keeps failing and STOPPED when a stopping criterion fires
(``rounds.stopping``: asked after TRAIN and while a round waits; ``round resume`` lifts it).

Every phase change is committed to the state db before the phase's work starts, so the
state always shows the phase that is running and a restart resumes from it (the phases
themselves are in ``rounds.phases``). The failure policy:

- transient errors inside a phase go through the adapters' one retry policy first
  (``connector.retry``); what still escapes counts as one failed attempt of the phase;
- the next attempt waits ``rounds.retry_backoff_seconds``, doubled each time (capped at
  30 min); after ``rounds.max_phase_attempts`` attempts the round goes to FAILED with a
  ``phase_failed`` alert that names the error and the fix;
- configuration errors (bad settings, a rejected token) go to FAILED at once: retrying
  cannot fix them;
- a FAILED round resumes at the phase it failed in when the daemon starts again
  (``recover``), so fixing the cause and restarting is enough.

The daemon, ``run --once``, ``simulate`` and the demo's random baseline all drive this
engine; there is no second one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from connector.contracts.errors import AuthError, ConfigError, ServiceUnavailable
from connector.contracts.learner import Learner, PoolScorer
from connector.rounds import commands, phases, report, stopping
from connector.rounds.context import (
    LS_WATERMARK,
    PAUSED,
    POOL_LISTINGS,
    POOL_WATERMARK,
    START_NOW,
    Ports,
    RoundContext,
    describe_overrides,
)
from connector.rounds.plan import RoundPlan
from connector.settings import Settings
from connector.state import Phase, Round, iso, parse_iso, utcnow
from connector.state.admin import PENDING

log = logging.getLogger(__name__)

#: Errors that retrying cannot fix: the round fails at once.
CONFIGURATION_ERRORS = (ConfigError, AuthError)
MAX_BACKOFF_S = 1800.0
#: A phase stopped by an outage (``ServiceUnavailable``) is tried again at least this
#: often and never goes to FAILED: the daemon's ``service_unreachable`` alert tells a
#: person, and the round resumes by itself when the service is back.
OUTAGE_MAX_BACKOFF_S = 60.0


class RoundEngine:
    """Drives rounds; each public method is one job of the daemon (or a CLI command)."""

    def __init__(
        self,
        settings: Settings,
        ports: Ports,
        learner: Learner,
        classes: Sequence[str],
        *,
        progress: Callable[[str, int, int], None] | None = None,
        scorer: PoolScorer | None = None,
    ) -> None:
        self.settings = settings
        self.ctx = RoundContext(settings, ports, learner, classes, progress, scorer)
        self.cfg = self.ctx.cfg
        self.ports = ports
        self.state = ports.state
        self.learner = learner
        self.classes = self.ctx.classes
        self.rounds_dir = self.cfg.rounds_dir
        #: Asked before each phase: True stops at that safe point (the daemon's first
        #: signal; ``simulate`` stops before scoring once its budget is spent).
        self.should_stop: Callable[[Round], bool] = lambda rnd: False
        self._handlers: dict[Phase, Callable[[RoundContext, Round], None]] = {
            Phase.INGEST: lambda ctx, rnd: phases.ingest(ctx, rnd, self._ingest_poll),
            Phase.TRAIN: phases.train,
            Phase.SCORE: phases.score,
            Phase.SELECT: phases.select,
            Phase.PUSH: phases.push,
        }

    # -------------------------------------------------------------- polling jobs
    def poll_labels(self) -> dict[str, int]:
        """Ingest annotations changed since the watermark (minus the overlap window).

        The poll job and the round job poll from two threads: the ticket, taken before
        anything is read, lets the state db drop a poll whose reads are older than an
        already applied one (``StateDB.apply_poll``); states and watermark commit together.
        """
        ticket = self.state.take_poll_ticket()
        stored = parse_iso(self.state.get_meta(LS_WATERMARK))
        since = None
        if stored is not None:
            since = stored - timedelta(seconds=self.cfg.overlap_seconds)
        result = self.ports.labeling.poll(since)
        extra: list[int] = []
        changed = self.state.apply_poll(
            result.states,
            ticket=ticket,
            watermark_key=LS_WATERMARK,
            watermark=result.watermark,
            extra_tasks=extra,
        )
        if changed is None:
            log.info("a newer poll was applied first; dropped this one's older reads")
            return {}
        if extra:
            # Second tasks of one item (a killed push's import that landed late): the
            # unannotated ones are deleted, so annotators do not label an image twice.
            gone = self.ports.labeling.withdraw_tasks(sorted(set(extra)))
            log.warning(
                "%d second task(s) of already pushed items found (an import that landed "
                "after its daemon was killed); %d unannotated one(s) withdrawn",
                len(set(extra)),
                len(gone),
            )
        if changed:
            log.info("ingested %s from %d changed tasks", changed, len(result.states))
        return changed

    def list_pool(self, *, full: bool | None = None) -> int:
        """Record new pool objects. Incremental by key; every Nth listing is a full rescan."""
        listings = int(self.state.get_meta(POOL_LISTINGS, "0") or 0)
        if full is None:
            full = listings % self.cfg.full_rescan_every == 0
        start_after = None if full else self.state.get_meta(POOL_WATERMARK)
        new = 0
        last_key: str | None = None
        chunk: list[Any] = []
        for obj in self.ports.store.list_objects(start_after=start_after):
            chunk.append(obj)
            last_key = obj.key
            if len(chunk) >= 1000:
                new += self.state.upsert_discovered(chunk)
                chunk = []
        new += self.state.upsert_discovered(chunk)
        if last_key is not None:
            prior = self.state.get_meta(POOL_WATERMARK) or ""
            self.state.set_meta(POOL_WATERMARK, max(prior, last_key))
        self.state.set_meta(POOL_LISTINGS, str(listings + 1))
        if new:
            log.info("pool listing (%s) found %d new items", "full" if full else "incr.", new)
        return new

    def _ingest_poll(self) -> None:
        self.list_pool()
        self.poll_labels()

    # ------------------------------------------------------------ round driving
    def resolve_plan(self) -> RoundPlan:
        """The plan a round started now would run (settings plus admin overrides)."""
        return self.ctx.resolve()

    def next_round_trigger(self, current: Round | None) -> str | None:
        """Why a new round should start now, or None. Only asked while the round WAITs."""
        if self.state.get_meta(PAUSED) == "1":
            return None
        if current is None:
            # An empty bucket or prefix: wait for images rather than run an empty round
            # (which would WAIT for labels that can never come).
            if not self.state.count_items().get("discovered"):
                self.list_pool()
            return "cold-start" if self.state.count_items().get("discovered") else None
        if current.phase not in (Phase.WAIT, Phase.DONE):
            return None
        if self.state.get_meta(START_NOW) == "1":
            return "admin"
        done, total = self.state.batch_progress(current.round)
        if self.state.labels_since(current.round) < self.cfg.min_new_labels:
            return None
        if total == 0 or done / total >= self.cfg.min_labeled_fraction:
            return "batch-labeled"
        interval = self.cfg.interval_minutes
        if (
            interval is not None
            and (utcnow() - current.started_at).total_seconds() >= interval * 60
        ):
            return "schedule"
        return None

    def step(self) -> Round | None:
        """Advance the state machine as far as it can go now; returns the current round.

        Resumes an unfinished round from its committed phase, or starts a new one when a
        trigger holds. Returns when the round WAITs, waits out a failed attempt's
        backoff, is FAILED, or nothing is to be done. Pending admin commands are applied
        first (``rounds.commands``).
        """
        # The safe point for admin commands: no phase or push is in flight.
        commands.apply_pending(self.ctx)
        current = self.state.current_round()
        if current is not None and current.phase in (Phase.FAILED, Phase.STOPPED):
            return current
        if current is None or current.phase in (Phase.WAIT, Phase.DONE):
            if current is not None:
                self.poll_labels()
                if self._stop_if_due(current):
                    return self.state.get_round(current.round)
            trigger = self.next_round_trigger(current)
            if trigger is None:
                return current
            plan = self.ctx.resolve()
            current = self.state.start_round(trigger=trigger, plan=plan.to_json())
            self.state.set_meta(START_NOW, "0")
            log.info("round %d started (%s): %s", current.round, trigger, plan.describe())
        return self.resume(current.round)

    def resume(self, number: int) -> Round:
        """Run the round's phases from the committed one, under the failure policy."""
        while True:
            rnd = self.state.get_round(number)
            assert rnd is not None
            handler = self._handlers.get(rnd.phase)
            if handler is None or self.should_stop(rnd):
                return rnd
            if rnd.retry_at is not None and rnd.retry_at > utcnow():
                return rnd
            t0 = time.perf_counter()
            try:
                handler(self.ctx, rnd)
            except Exception as exc:
                self._phase_failed(rnd, exc)
                latest = self.state.get_round(number)
                assert latest is not None
                return latest
            took = time.perf_counter() - t0
            self.state.phase_seconds(number, rnd.phase.value, took)
            log.info("round %d: %s took %.1f s", number, rnd.phase.value, took)
            if rnd.phase is Phase.TRAIN:
                trained = self.state.get_round(number)
                assert trained is not None
                if self._stop_if_due(trained):
                    return self.state.get_round(number) or trained

    def _stop_if_due(self, rnd: Round) -> bool:
        """Ask the stopping criteria about ``rnd`` (just trained, or waiting); on a stop,
        put it at STOPPED with a ``stopped`` alert and write its report. True if stopped."""
        stop, _ = stopping.check(self.settings.stopping, self.state, rnd)
        if stop is None:
            return False
        record = {
            "criterion": stop.criterion,
            "figures": stop.figures,
            "message": (
                f"round {rnd.round}: stopped by {stop.criterion}: {stop.message}. Nothing more "
                "is pushed; `al-connector round resume` lifts the stop (see docs/admin.md)"
            ),
            "round": rnd.round,
            "resume_phase": rnd.phase.value,
            "at": iso(utcnow()),
        }
        self.state.stop_round(rnd.round, stopping.STOPPED, record)
        log.warning("%s", record["message"])
        stopped = self.state.get_round(rnd.round)
        assert stopped is not None
        done, total = self.state.batch_progress(rnd.round)
        report.write_round_report(
            self.ctx.round_dir(rnd.round), stopped, done, total, plot=self.ctx.plots
        )
        return True

    def _phase_failed(self, rnd: Round, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        phase = rnd.phase.value
        if isinstance(exc, CONFIGURATION_ERRORS):
            self._fail(rnd, error, "a configuration error is not retried")
            return
        attempts = rnd.attempts + 1
        outage = isinstance(exc, ServiceUnavailable)
        if attempts >= self.cfg.max_phase_attempts and not outage:
            if not isinstance(exc, (OSError, ConnectionError, TimeoutError)):
                log.error("round %d: %s failed", rnd.round, phase, exc_info=exc)
            self._fail(rnd, error, f"it failed {attempts} times in a row")
            return
        cap = OUTAGE_MAX_BACKOFF_S if outage else MAX_BACKOFF_S
        wait = min(self.cfg.retry_backoff_seconds * 2 ** min(attempts - 1, 20), cap)
        retry_at = utcnow() + timedelta(seconds=wait)
        self.state.phase_attempt_failed(rnd.round, error, iso(retry_at))
        budget = "until it answers" if outage else f"of {self.cfg.max_phase_attempts}"
        # An outage is logged when it stops the phase; its further tries at DEBUG.
        log.log(
            logging.DEBUG if outage and attempts > 1 else logging.WARNING,
            "round %d: %s failed (attempt %d %s): %s; next attempt in %.0f s",
            rnd.round,
            phase,
            attempts,
            budget,
            error,
            wait,
        )

    def _fail(self, rnd: Round, error: str, why: str) -> None:
        phase = rnd.phase.value
        self.state.fail_round(rnd.round, rnd.phase, error)
        message = (
            f"round {rnd.round}: phase {phase} FAILED ({why}): {error}. Fix the cause, then "
            f"restart al-connector (`al-connector run`): the round resumes at {phase}"
        )
        log.error("%s", message)
        self.state.add_alert(
            "phase_failed",
            f"phase-failed:r{rnd.round}:{phase}:{iso(utcnow())}",
            message,
            severity="error",
            round_number=rnd.round,
        )

    def recover(self) -> list[int]:
        """At start-up: put FAILED rounds back at the phase they failed in. Returns them.

        Admin commands a stopped process was applying go back to pending too."""
        self.state.reset_applying()
        current = self.state.current_round()
        if current is None or current.phase is not Phase.FAILED:
            return []
        phase = self.state.resume_failed(current.round)
        log.warning(
            "round %d was FAILED at %s (%s); resuming it there",
            current.round,
            phase.value if phase else "?",
            current.error,
        )
        return [current.round]

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        current = self.state.current_round()
        out: dict[str, Any] = {
            "items": self.state.count_items(),
            "paused": self.state.get_meta(PAUSED) == "1",
            "overrides": describe_overrides(self.state),
            "pending_commands": self.state.commands(PENDING),
            "stopped": stopping.stopped(self.state),
        }
        if current is not None:
            done, total = self.state.batch_progress(current.round)
            out["round"] = {
                "number": current.round,
                "phase": current.phase.value,
                "strategy": current.strategy,
                "plan": current.plan,
                "model_version": current.model_version,
                "batch_done": done,
                "batch_total": total,
                "started_at": iso(current.started_at),
                "error": current.error,
                "attempts": current.attempts,
                "retry_at": iso(current.retry_at),
                "failed_phase": current.failed_phase.value if current.failed_phase else None,
            }
        return out
