"""What the phases of a round work with: the ports, the learner, the classes, and the few
settings values they need, read once from ``Settings`` into ``EngineConfig``.

Also the round's helpers that several phases share: its folder, its random generators,
the plan as re-resolved now, labeled items as cached files, readability checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connector.contracts.learner import Learner, PoolScorer
from connector.contracts.ports import LabelingBackend, ObjectStore
from connector.rounds.plan import Overrides, RoundPlan, check_learner, resolve_plan
from connector.rounds.selection import readable_prefix
from connector.scoring import LocalScorer
from connector.settings import Settings
from connector.state import Round, StateDB
from connector.storage.cache import LabeledCache

log = logging.getLogger(__name__)

#: Meta keys of the state db that steer rounds (written by admin commands and drivers).
LS_WATERMARK = "ls_watermark"
POOL_WATERMARK = "pool_watermark"
POOL_LISTINGS = "pool_listings"
START_NOW = "start_now"
PAUSED = "paused"
OVERRIDE_STRATEGY = "override_strategy"
OVERRIDE_BATCH = "override_batch_size"
#: The same, for the next round only: layered over the persistent ones and deleted when a
#: round's selection is frozen (``phases.select``).
NEXT_STRATEGY = "next_strategy"
NEXT_BATCH = "next_batch_size"
NEXT_ROUND_ONLY = (NEXT_STRATEGY, NEXT_BATCH)


def _spec(get: Callable[[str], str | None], key: str) -> dict[str, Any]:
    raw = get(key)
    return dict(json.loads(raw)) if raw else {}


def read_overrides(state: StateDB, get: Callable[[str], str | None] | None = None) -> Overrides:
    """The admin overrides in force: next-round-only ones over persistent ones.

    A next-round strategy other than the persistent one brings only its own parameters;
    parameters for the same strategy are merged, the next round's winning. ``get`` reads
    a meta key (default: the state db's), so a command can be checked against the
    overrides it would leave behind.
    """
    get = get or state.get_meta
    persist, nxt = _spec(get, OVERRIDE_STRATEGY), _spec(get, NEXT_STRATEGY)
    name = nxt.get("name") or persist.get("name")
    params: dict[str, Any] | None
    if nxt.get("name") and nxt.get("name") != persist.get("name"):
        params = nxt.get("params")
    elif persist.get("params") is None and nxt.get("params") is None:
        params = None
    else:
        params = {**(persist.get("params") or {}), **(nxt.get("params") or {})}
    batch = get(NEXT_BATCH) or get(OVERRIDE_BATCH)
    return Overrides(strategy=name, params=params, batch_size=int(batch) if batch else None)


def describe_overrides(state: StateDB) -> dict[str, Any]:
    """The stored overrides as a person reads them (``status --json``)."""

    def one(strategy_key: str, batch_key: str) -> dict[str, Any]:
        spec = _spec(state.get_meta, strategy_key)
        batch = state.get_meta(batch_key)
        out: dict[str, Any] = {}
        if spec.get("name"):
            out["strategy"] = spec["name"]
        if spec.get("params"):
            out["params"] = spec["params"]
        if batch:
            out["batch_size"] = int(batch)
        return out

    return {
        "persistent": one(OVERRIDE_STRATEGY, OVERRIDE_BATCH),
        "next_round": one(NEXT_STRATEGY, NEXT_BATCH),
    }


@dataclass
class Ports:
    state: StateDB
    store: ObjectStore
    labeling: LabelingBackend
    cache: LabeledCache


@dataclass(frozen=True)
class EngineConfig:
    """The settings the round engine reads, in one place."""

    seed: int
    validation_size: int
    overlap_seconds: float
    full_rescan_every: int
    read_concurrency: int
    import_chunk_size: int
    import_settle_seconds: float
    min_labeled_fraction: float
    interval_minutes: float | None
    min_new_labels: int
    max_phase_attempts: int
    retry_backoff_seconds: float
    rounds_dir: Path
    #: The model settings, as written into checkpoints and hashed into model versions.
    model_identity: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        r = settings.rounds
        return cls(
            seed=settings.model.seed,
            validation_size=settings.validation.size,
            overlap_seconds=settings.polling.overlap_seconds,
            full_rescan_every=settings.storage.full_rescan_every,
            read_concurrency=settings.storage.read_concurrency,
            import_chunk_size=settings.label_studio.import_chunk_size,
            import_settle_seconds=settings.label_studio.import_settle_seconds,
            min_labeled_fraction=r.min_labeled_fraction,
            interval_minutes=r.interval_minutes,
            min_new_labels=r.min_new_labels,
            max_phase_attempts=r.max_phase_attempts,
            retry_backoff_seconds=r.retry_backoff_seconds,
            rounds_dir=settings.rounds_dir(),
            # Where it trains does not name the model: a move to a GPU keeps the versions.
            model_identity=settings.model.model_dump(mode="json", exclude={"device"}),
            label_map=dict(settings.labels.map),
        )


@dataclass
class ScoredPool:
    """What SCORE hands to SELECT: the candidates in order (pinned first) and, when a model
    read them, its outputs. Kept in memory: a restart at SELECT scores again."""

    ids: list[str]
    n_pinned: int
    outputs: Any = None  # strategies.PoolOutputs with ids, or None (random cold start)
    trained: bool = False
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: The model's outputs on a sample of the labeled items (the report compares their
    #: scores with the candidates'), or None.
    labeled: Any = None
    #: Round 0's validation split, drawn at SCORE (before any pre-training reads the pool).
    validation: list[str] | None = None


class RoundContext:
    def __init__(
        self,
        settings: Settings,
        ports: Ports,
        learner: Learner,
        classes: Sequence[str],
        progress: Callable[[str, int, int], None] | None = None,
        scorer: PoolScorer | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = EngineConfig.from_settings(settings)
        self.ports = ports
        self.state = ports.state
        self.learner = learner
        #: Reads and scores the candidates at SCORE: in this process unless the app
        #: gives another engine (``connector.scoring``, ``scoring.engine``).
        self.scorer: PoolScorer = scorer or LocalScorer(
            learner, ports.store, self.cfg.read_concurrency
        )
        self.classes = list(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.progress = progress
        self.scored: dict[int, ScoredPool] = {}
        #: Draw the per-round plots (score histograms). ``simulate`` turns them off: it runs
        #: hundreds of rounds nobody looks at one by one (a plot costs about 0.3 s).
        self.plots = True

    # ----------------------------------------------------------------- the plan
    def overrides(self) -> Overrides:
        return read_overrides(self.state)

    def resolve(self, rnd: Round | None = None) -> RoundPlan:
        """The plan as settings and overrides say now; recorded on ``rnd`` if it changed.

        A ConfigError also when the learner cannot train what the strategy needs."""
        plan = resolve_plan(self.settings, self.overrides())
        check_learner(plan.build(), self.learner, setting="strategy.name")
        if rnd is not None and rnd.plan != plan.to_json():
            if rnd.plan is not None:
                log.info("round %d: plan is now %s", rnd.round, plan.describe())
            self.state.set_plan(rnd.round, plan.to_json())
        return plan

    # ------------------------------------------------------------------ helpers
    def rng(self, rnd: Round, purpose: str) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, rnd.round, zlib.crc32(purpose.encode())])

    def round_dir(self, number: int) -> Path:
        path = self.cfg.rounds_dir / f"{number:04d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def model_version(self, rnd: Round) -> str:
        """Names the round and the config, e.g. ``al-r0003-entropy-1a2b3c4d``."""
        config = json.dumps(
            {"model": self.cfg.model_identity, "strategy": rnd.strategy, "params": rnd.params},
            sort_keys=True,
        )
        digest = hashlib.sha256(config.encode()).hexdigest()[:8]
        return f"al-r{rnd.round:04d}-{rnd.strategy}-{digest}"

    def readable(self, ordered: list[str], n: int) -> list[str]:
        """The first ``n`` readable items of ``ordered``; unreadable ones are quarantined."""
        good, bad = readable_prefix(self.ports.store, ordered, n, self.cfg.read_concurrency)
        if bad:
            self.state.mark_corrupt(bad)
            log.warning("%d unreadable pool items quarantined, e.g. %s: %s", len(bad), *bad[0])
        return good

    def labeled(self, split: str) -> list[tuple[Path, int]]:
        """Labeled items of a split as files with class indices: the pool's own files for
        a local pool, copies in the labeled cache otherwise."""
        rows = self.state.labeled_items(split)
        known = [(i, e, lab) for i, e, lab in rows if lab in self.class_index]
        paths: dict[str, Path | Exception] = {}
        remote = []
        for item, etag, _ in known:
            local = self.ports.store.local_path(item)
            if local is None:
                remote.append((item, etag))
            else:
                paths[item] = local
        paths.update(
            self.ports.cache.ensure_many(
                self.ports.store, remote, max_workers=self.cfg.read_concurrency
            )
        )
        out = []
        for item, _etag, lab in known:
            path = paths[item]
            if isinstance(path, Path):
                out.append((path, self.class_index[lab]))
            else:
                log.warning("labeled item %s cannot be read (%s); left out of training", item, path)
        return out
