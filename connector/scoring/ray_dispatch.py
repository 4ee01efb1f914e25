"""One round's shards over Ray actors, with the retry accounting (``ray_engine`` steps 1-3).

Each worker place (``_Slot``) holds an actor that reserved ``cpus_per_worker`` CPUs,
opened the store and loaded the model; a ready actor holds up to ``INFLIGHT_PER_WORKER``
shards. When an actor dies its shards go back to the front of the queue and a new actor
takes its place; the result of each shard is taken once. Like ``ray_engine``, imported
only when ``scoring.engine = "ray"``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray import exceptions as rex

from connector.contracts.learner import Progress
from connector.learning.checkpoints import checkpoint_bytes
from connector.learning.trained import TrainedModel
from connector.scoring.shards import ScoringError, Shard, ShardResult, StoreFailure
from connector.scoring.worker import ShardWorker

if TYPE_CHECKING:
    from connector.scoring.ray_engine import RayScorer

log = logging.getLogger(__name__)

#: Shards an actor holds at once: one it scores and the next, so it never waits for us.
INFLIGHT_PER_WORKER = 2
#: With no worker started after this long, the cluster has no room for one.
WORKER_START_TIMEOUT_S = 300.0
_POLL_S = 1.0
#: A worker lost: its shards are scored again elsewhere.
_LOST_WORKER = (
    rex.RayActorError,
    rex.WorkerCrashedError,
    rex.ObjectLostError,
    rex.OwnerDiedError,
    rex.NodeDiedError,
    rex.OutOfMemoryError,
)


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of an error, for one log line (Ray's run to pages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@dataclass
class _Slot:
    """One worker place: the actor in it now, and the shards it holds."""

    number: int
    actor: Any = None
    ready_ref: Any = None
    ready: bool = False
    failed_starts: int = 0
    dead: bool = False
    inflight: dict[Any, Shard] = field(default_factory=dict)


class Dispatch:
    """One round's shards over the workers, with the retry accounting."""

    def __init__(
        self,
        scorer: RayScorer,
        shards: list[Shard],
        model: TrainedModel,
        job: tuple[int, int, bool],
    ) -> None:
        cfg = scorer.cfg
        self.cfg = cfg
        self.job = dict(zip(("mc_samples", "seed", "with_embeddings"), job, strict=True))
        self.pending: deque[Shard] = deque(shards)
        self.results: dict[int, ShardResult] = {}
        self.lost: Counter[int] = Counter()
        self.owner: dict[Any, tuple[_Slot, Shard | None]] = {}
        self.slots = [_Slot(i) for i in range(cfg.workers)]
        self.deaths = 0
        self.last_error = ""
        self.t0 = time.monotonic()
        self.startup_s: float | None = None  # until the first worker was ready
        self.shard_s = 0.0  # the workers' time in shards, summed
        self.actor_cls = ray.remote(ShardWorker).options(
            num_cpus=cfg.cpus_per_worker, max_restarts=0, max_task_retries=0
        )
        self.init_args = (scorer.recipe, ray.put(checkpoint_bytes(model)))
        self.init_kwargs = {
            "batch_size": scorer.batch_size,
            "read_concurrency": scorer.read_concurrency,
            "torch_threads": max(1, int(cfg.cpus_per_worker)),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "retried_shards": sum(self.lost.values()),
            "lost_workers": self.deaths,
            "startup_seconds": round(self.startup_s or 0.0, 2),
            "worker_seconds": round(self.shard_s, 2),
        }

    def run(self, progress: Progress | None, total: int) -> dict[int, ShardResult]:
        done_items = 0
        waiting_since = time.monotonic()
        try:
            for slot in self.slots:
                self._start(slot)
            while self.pending or any(s.inflight for s in self.slots):
                self._feed()
                if not self.owner:
                    raise ScoringError(f"no Ray worker is left ({self.last_error})")
                done, _ = ray.wait(list(self.owner), num_returns=1, timeout=_POLL_S)
                if not done:
                    if any(s.ready for s in self.slots):
                        waiting_since = time.monotonic()
                    elif time.monotonic() - waiting_since > WORKER_START_TIMEOUT_S:
                        raise ScoringError(
                            f"no Ray worker started in {WORKER_START_TIMEOUT_S:.0f} s: the "
                            f"cluster has no room for {self.cfg.cpus_per_worker:g} CPUs "
                            f"(free: {ray.available_resources().get('CPU', 0):g}); lower "
                            "scoring.cpus_per_worker or add nodes"
                        )
                    continue
                n = self._take(done[0])
                if n and progress is not None:
                    done_items += n
                    progress("scoring", done_items, total)
        finally:
            for slot in self.slots:
                self._kill(slot)
        return self.results

    def _start(self, slot: _Slot) -> None:
        slot.actor = self.actor_cls.remote(*self.init_args, **self.init_kwargs)
        slot.ready = False
        slot.ready_ref = slot.actor.pid.remote()  # answers once the model is loaded
        self.owner[slot.ready_ref] = (slot, None)

    def _kill(self, slot: _Slot) -> None:
        if slot.actor is not None:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception as exc:  # already gone; nothing is left to release
                log.debug("Ray worker %d: kill: %s", slot.number, short_error(exc))
            slot.actor = None

    def _feed(self) -> None:
        for slot in self.slots:
            while slot.ready and self.pending and len(slot.inflight) < INFLIGHT_PER_WORKER:
                shard = self.pending.popleft()
                ref = slot.actor.score.remote(shard, **self.job)
                slot.inflight[ref] = shard
                self.owner[ref] = (slot, shard)

    def _take(self, ref: Any) -> int:
        """Handle one finished call; returns the items of a shard it completed."""
        slot, shard = self.owner.pop(ref)
        try:
            value = ray.get(ref)
        except _LOST_WORKER as exc:
            self._lost(slot, exc)
            return 0
        except rex.RayTaskError as exc:
            what = shard.describe() if shard else "start-up"
            raise ScoringError(
                f"a Ray worker failed on {what}: {short_error(exc.cause or exc)}"
            ) from None
        if shard is None:
            slot.ready, slot.ready_ref = True, None
            if self.startup_s is None:
                self.startup_s = time.monotonic() - self.t0
            log.debug("Ray worker %d ready (pid %s)", slot.number, value)
            return 0
        del slot.inflight[ref]
        if isinstance(value, StoreFailure):
            raise value.error()
        if shard.index in self.results:  # cannot happen: one call per try of a shard
            log.warning("%s came back twice; the first result is kept", shard.describe())
            return 0
        self.shard_s += value.seconds
        # Own copies: Ray hands back arrays in its shared memory, freed once unreferenced.
        self.results[shard.index] = replace(
            value,
            probs_N_K_C=np.array(value.probs_N_K_C),
            emb_N_D=None if value.emb_N_D is None else np.array(value.emb_N_D),
            aux={name: np.array(values) for name, values in value.aux.items()},
        )
        return len(shard.keys)

    def _lost(self, slot: _Slot, exc: BaseException) -> None:
        """The slot's actor died: its shards go back to the front of the queue, and a new
        actor takes the slot (unless actors keep dying there before they are ready)."""
        self.deaths += 1
        self.last_error = short_error(exc)
        requeue = list(slot.inflight.values())
        for ref in [*slot.inflight, slot.ready_ref]:
            self.owner.pop(ref, None)
        slot.inflight.clear()
        was_ready, slot.ready, slot.ready_ref = slot.ready, False, None
        self._kill(slot)
        for shard in reversed(requeue):
            self.lost[shard.index] += 1
            if self.lost[shard.index] >= self.cfg.max_shard_attempts:
                raise ScoringError(
                    f"{shard.describe()} lost its Ray worker {self.lost[shard.index]} times "
                    f"(scoring.max_shard_attempts; last: {self.last_error}); SCORE is tried "
                    "again: check the workers' memory and nodes"
                )
            self.pending.appendleft(shard)
        log.warning(
            "Ray worker %d lost (%s); %d shard(s) go back to the queue",
            slot.number,
            self.last_error,
            len(requeue),
        )
        slot.failed_starts = 0 if was_ready else slot.failed_starts + 1
        if slot.failed_starts >= self.cfg.max_shard_attempts:
            slot.dead = True
            log.error("Ray worker %d could not start: %s", slot.number, self.last_error)
            if all(s.dead for s in self.slots):
                raise ScoringError(
                    f"no Ray worker could start ({self.last_error}); the cluster's nodes "
                    f"need al-connector and Ray {ray.__version__} (the image built with "
                    "--build-arg EXTRAS=ray, docs/scale.md) and room for "
                    f"{self.cfg.cpus_per_worker:g} CPUs"
                )
            return
        self._start(slot)
