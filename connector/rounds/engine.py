"""The round, as a durable state machine: INGEST -> TRAIN -> SCORE -> SELECT -> PUSH -> WAIT.

Each phase is a method that reads the state db and the ports, does its work, and commits
the next phase before returning, so a crash anywhere resumes from the last committed
phase. A selection is frozen (with its scores) before anything is pushed; a round whose
selection is frozen is never re-scored; pushes are idempotent and committed chunk by
chunk.

Round 0 is the cold start: a random validation split (labeled first, never chosen by a
strategy) and a first batch chosen by the cold-start strategy, without a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from connector.contracts.errors import ConfigError
from connector.contracts.learner import Learner, Scored
from connector.contracts.ports import LabelingBackend, ObjectStore, TaskToPush
from connector.rounds import report
from connector.rounds.selection import Pick, picks, readable_prefix, sample_candidates
from connector.settings import Settings
from connector.state import Phase, Round, SelectedItem, StateDB, iso, parse_iso, utcnow
from connector.storage.cache import LabeledCache
from strategies import PoolOutputs, Selection, get_strategy

log = logging.getLogger(__name__)


#: Meta keys of the state db.
LS_WATERMARK = "ls_watermark"
POOL_WATERMARK = "pool_watermark"
POOL_LISTINGS = "pool_listings"
START_NOW = "start_now"
PAUSED = "paused"
OVERRIDE_STRATEGY = "override_strategy"
OVERRIDE_BATCH = "override_batch_size"


@dataclass
class Ports:
    state: StateDB
    store: ObjectStore
    labeling: LabelingBackend
    cache: LabeledCache


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
    ) -> None:
        self.settings = settings
        self.ports = ports
        self.state = ports.state
        self.learner = learner
        self.classes = list(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.progress = progress
        self.rounds_dir = settings.rounds_dir()
        #: Asked between phases: True stops at that safe point (the daemon's first signal).
        self.should_stop: Callable[[], bool] = lambda: False

    # -------------------------------------------------------------- polling jobs
    def poll_labels(self) -> dict[str, int]:
        """Ingest annotations changed since the watermark (minus the overlap window)."""
        stored = parse_iso(self.state.get_meta(LS_WATERMARK))
        since = None
        if stored is not None:
            since = stored - timedelta(seconds=self.settings.polling.overlap_seconds)
        result = self.ports.labeling.poll(since)
        changed = self.state.apply_label_states(result.states)
        # Never move the watermark back: an idle poll may answer with the (overlapped)
        # ``since``, and polls must not grow more expensive over time.
        mark = result.watermark
        if mark is not None and (stored is None or mark > stored):
            self.state.set_meta(LS_WATERMARK, iso(mark) or "")
        if changed:
            log.info("ingested %s from %d changed tasks", changed, len(result.states))
        return changed

    def list_pool(self, *, full: bool | None = None) -> int:
        """Record new pool objects. Incremental by key; every Nth listing is a full rescan."""
        listings = int(self.state.get_meta(POOL_LISTINGS, "0") or 0)
        if full is None:
            full = listings % self.settings.storage.full_rescan_every == 0
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

    # ------------------------------------------------------------ round driving
    def effective_strategy(self) -> tuple[str, dict[str, Any], int]:
        """Strategy, parameters and batch size, with admin overrides applied."""
        name = self.settings.strategy.name
        params = dict(self.settings.strategy.params)
        override = self.state.get_meta(OVERRIDE_STRATEGY)
        if override:
            spec = json.loads(override)
            name, params = spec["name"], spec.get("params", {})
        batch = int(self.state.get_meta(OVERRIDE_BATCH) or self.settings.strategy.batch_size)
        return name, params, batch

    def next_round_trigger(self) -> str | None:
        """Why a new round should start now, or None. Only asked while the round WAITs."""
        if self.state.get_meta(PAUSED) == "1":
            return None
        current = self.state.current_round()
        if current is None:
            return "cold-start"
        if current.phase not in (Phase.WAIT, Phase.DONE):
            return None
        max_rounds = self.settings.rounds.max_rounds
        if max_rounds is not None and current.round + 1 >= max_rounds:
            return None
        if self.state.get_meta(START_NOW) == "1":
            return "admin"
        done, total = self.state.batch_progress(current.round)
        new_labels = self.state.labels_since(current.round)
        if new_labels < self.settings.rounds.min_new_labels:
            return None
        if total == 0 or done / total >= self.settings.rounds.min_labeled_fraction:
            return "batch-labeled"
        interval = self.settings.rounds.interval_minutes
        if (
            interval is not None
            and (utcnow() - current.started_at).total_seconds() >= interval * 60
        ):
            return "schedule"
        return None

    def step(self) -> Round | None:
        """Advance the state machine as far as it can go now; returns the current round.

        Resumes an unfinished round from its committed phase, or starts a new one when a
        trigger holds. Returns when the round WAITs (or nothing is to be done).
        """
        current = self.state.current_round()
        if current is None or current.phase in (Phase.WAIT, Phase.DONE, Phase.FAILED):
            if current is not None:
                self.poll_labels()
            trigger = self.next_round_trigger()
            if trigger is None:
                return current
            name, params, batch = self.effective_strategy()
            if current is None:
                name, params = self.settings.strategy.cold_start, {}
            current = self.state.start_round(
                trigger=trigger, strategy=name, params=params, batch_size=batch
            )
            self.state.set_meta(START_NOW, "0")
            log.info("round %d started (%s, strategy %s)", current.round, trigger, name)
        return self.resume(current.round)

    def resume(self, number: int) -> Round:
        handlers = {
            Phase.INGEST: self._ingest,
            Phase.TRAIN: self._train,
            Phase.SCORE: self._score_and_select,
            Phase.SELECT: self._score_and_select,
            Phase.PUSH: self._push,
        }
        while True:
            rnd = self.state.get_round(number)
            assert rnd is not None
            handler = handlers.get(rnd.phase)
            if handler is None or self.should_stop():
                return rnd
            t0 = time.perf_counter()
            try:
                handler(rnd)
            except Exception as exc:
                # The phase stays committed as it was: the next step retries it.
                log.exception("round %d: phase %s failed; it will be retried", number, rnd.phase)
                self.state.set_phase(number, rnd.phase, error=f"{type(exc).__name__}: {exc}")
                raise
            log.info("round %d: %s took %.1f s", number, rnd.phase.value, time.perf_counter() - t0)

    # ------------------------------------------------------------------- phases
    def _ingest(self, rnd: Round) -> None:
        self.list_pool()
        self.poll_labels()
        n = self.state.snapshot_labels(rnd.round)
        counts = self.state.count_items()
        metrics = {"labels": n, "items": counts}
        has_train = bool(self.state.labeled_items("train"))
        nxt = Phase.TRAIN if rnd.round > 0 and has_train else Phase.SCORE
        self.state.set_phase(rnd.round, nxt, metrics=metrics)

    def _train(self, rnd: Round) -> None:
        train = self._labeled("train")
        val = self._labeled("validation")
        labels = sorted({lab for _, lab in train})
        if len(labels) < 2:
            log.warning("round %d: only %d class(es) labeled; no model yet", rnd.round, len(labels))
            self.state.set_phase(rnd.round, Phase.SCORE, metrics={"trained": False})
            return
        t0 = time.perf_counter()
        seed = self.settings.model.seed + rnd.round
        model = self.learner.fit(
            [p for p, _ in train],
            [y for _, y in train],
            self.classes,
            seed=seed,
            progress=self.progress,
        )
        train_s = time.perf_counter() - t0
        evaluation = (
            self.learner.evaluate(model, [p for p, _ in val], [y for _, y in val])
            if val
            else {"n": 0, "accuracy": None}
        )
        version = self.model_version(rnd)
        out = self.round_dir(rnd.round)
        self.learner.save(
            model,
            out / "model.pt",
            {
                "round": rnd.round,
                "model_version": version,
                "classes": self.classes,
                "settings": self.settings.model.model_dump(mode="json"),
                "label_map": self.settings.labels.map,
            },
        )
        metrics = {
            "trained": True,
            "n_train": len(train),
            "train_seconds": round(train_s, 2),
            "validation": evaluation,
        }
        log.info(
            "round %d (%s): trained on %d labels; validation accuracy %s on %d",
            rnd.round,
            version,
            len(train),
            evaluation.get("accuracy"),
            evaluation["n"],
        )
        self.state.set_phase(rnd.round, Phase.SCORE, metrics=metrics, model_version=version)

    def _score_and_select(self, rnd: Round) -> None:
        self.state.set_phase(rnd.round, Phase.SELECT)
        rng = np.random.default_rng([self.settings.model.seed, rnd.round])
        candidates = self._candidates(rng)
        pinned = [c for c in self.state.pinned_candidates() if c]
        pinned_set = set(pinned)
        selected: list[SelectedItem] = []
        if rnd.round == 0:
            # The validation split: uniform random over readable candidates.
            n_val = min(self.settings.validation.size, len(candidates))
            shuffled = [candidates[i] for i in rng.permutation(len(candidates))]
            val_ids = self._readable(shuffled, n_val)
            selected += [
                SelectedItem(i, item, "validation", None, None, None)
                for i, item in enumerate(val_ids)
            ]
            taken = set(val_ids)
            candidates = [c for c in candidates if c not in taken]
        candidates = [c for c in candidates if c not in pinned_set]
        k = max(0, rnd.batch_size - len(pinned))
        model_path = self.round_dir(rnd.round) / "model.pt"
        model = self.learner.load(model_path) if rnd.metrics.get("trained") else None
        chosen, diagnostics = self._choose(rnd, model, pinned + candidates, len(pinned), k, rng)
        base = len(selected)
        for j, (item, score, pred, conf) in enumerate(chosen):
            selected.append(SelectedItem(base + j, item, "train", score, pred, conf))
        report.write_selection(self.round_dir(rnd.round), rnd, selected, diagnostics)
        self.state.set_phase(
            rnd.round,
            Phase.SELECT,
            metrics={"selection": {k2: v for k2, v in diagnostics.items() if k2 != "pool_scores"}},
        )
        self.state.freeze_selection(rnd.round, selected)
        log.info("round %d: selection of %d frozen (%s)", rnd.round, len(selected), rnd.strategy)

    def _choose(
        self,
        rnd: Round,
        model: Any,
        ids: list[str],
        n_pinned: int,
        k: int,
        rng: np.random.Generator,
    ) -> tuple[list[Pick], dict[str, Any]]:
        """Score ``ids`` and pick ``k`` of those after the first ``n_pinned`` (kept first)."""
        try:
            strategy = get_strategy(rnd.strategy, **rnd.params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"strategy {rnd.strategy!r}: {exc}") from None
        diagnostics: dict[str, Any] = {"candidates": len(ids) - n_pinned, "pinned": n_pinned}
        if model is None and strategy.needs_embeddings:
            # Cold start of a diversity method (e.g. TypiClust): embeddings of the initial
            # model, pretrained when the user gave weights, random-init otherwise.
            model = self.learner.init_model(self.classes, seed=self.settings.model.seed)
        elif model is None:
            # No model yet: uncertainty scores of an untrained model are noise, so the
            # batch is uniform random (and the report says so).
            if rnd.strategy != "random":
                log.warning(
                    "round %d: no model yet; strategy %s replaced by random for this round",
                    rnd.round,
                    rnd.strategy,
                )
            rest = ids[n_pinned:]
            shuffled = [rest[i] for i in rng.permutation(len(rest))]
            picked: list[Pick] = [(i, None, None, None) for i in ids[:n_pinned]]
            picked += [(i, None, None, None) for i in self._readable(shuffled, k)]
            diagnostics["strategy"] = "random" if rnd.strategy != "random" else rnd.strategy
            return picked, diagnostics
        t0 = time.perf_counter()
        scored = self._score(model, ids, strategy.needs_embeddings)
        diagnostics["score_seconds"] = round(time.perf_counter() - t0, 2)
        if scored.failures:
            n_bad = self.state.mark_corrupt(scored.failures)
            diagnostics["unreadable"] = [{"item": i, "reason": r} for i, r in scored.failures]
            log.warning("round %d: %d unreadable pool items quarantined", rnd.round, n_bad)
        out = scored.outputs
        pos = {item: j for j, item in enumerate(out.ids or [])}
        pin_rows = [pos[i] for i in ids[:n_pinned] if i in pos]
        rest_rows = np.asarray([pos[i] for i in ids[n_pinned:] if i in pos], dtype=np.int64)
        pool = out.subset(rest_rows)
        if strategy.needs_embeddings and out.emb_N_D is not None:
            labeled = self._labeled("train")
            pool = PoolOutputs(
                pool.probs_N_K_C,
                pool.emb_N_D,
                self.learner.embed_labeled(model, [p for p, _ in labeled]),
                pool.ids,
            )
        t1 = time.perf_counter()
        sel: Selection = strategy.select(pool, k, rng)
        diagnostics["select_seconds"] = round(time.perf_counter() - t1, 3)
        diagnostics["strategy"] = sel.strategy
        diagnostics.update(report.score_diagnostics(strategy, pool, sel))

        return picks(out, pin_rows, rest_rows, sel, self.classes), diagnostics

    def _score(self, model: Any, ids: list[str], with_embeddings: bool) -> Scored:
        items = self.ports.store.read_many(ids, max_workers=self.settings.storage.read_concurrency)
        return self.learner.score(
            model, items, with_embeddings=with_embeddings, progress=self.progress
        )

    def _push(self, rnd: Round) -> None:
        version = rnd.model_version or self.model_version(rnd)
        pending = self.state.unpushed(rnd.round)
        chunk_size = self.settings.label_studio.import_chunk_size
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            tasks = [
                TaskToPush(
                    item_id=s.item_id,
                    image_url=self.ports.store.url_for(s.item_id),
                    round=rnd.round,
                    split="validation" if s.split == "validation" else "train",
                    priority=s.rank,
                    predicted_label=s.predicted_label,
                    confidence=s.confidence,
                    acquisition_score=s.score,
                )
                for s in chunk
            ]
            mapping = self.ports.labeling.push(tasks, version)
            missing = [s.item_id for s in chunk if s.item_id not in mapping]
            if missing:
                raise RuntimeError(
                    f"push returned no task for {len(missing)} items, e.g. "
                    f"{missing[0]}; the next step reconciles and retries"
                )
            self.state.record_push(rnd.round, mapping, {s.item_id: s.split for s in chunk})
            if self.progress:
                self.progress("push", min(start + chunk_size, len(pending)), len(pending))
        if rnd.model_version is not None:
            # After the push: Label Studio accepts a model version only once a prediction
            # carries it. From now on it shows and samples this round's predictions.
            self.ports.labeling.set_model_version(version)
        done, total = self.state.batch_progress(rnd.round)
        self.state.set_phase(rnd.round, Phase.WAIT, metrics={"pushed": total})
        finished = self.state.get_round(rnd.round)
        assert finished is not None
        report.write_round_report(self.round_dir(rnd.round), finished, done, total)
        log.info(
            "round %d (%s): %d tasks in Label Studio; waiting for labels", rnd.round, version, total
        )

    # ------------------------------------------------------------------ helpers
    def _candidates(self, rng: np.random.Generator) -> list[str]:
        """Unqueued, unlabeled items; a random subset of ``max_candidates`` if set
        (reservoir sampling: memory stays at that size however large the pool)."""
        ids = self.state.iter_candidate_ids()
        return sample_candidates(ids, self.settings.strategy.max_candidates, rng)

    def _readable(self, ordered: list[str], n: int) -> list[str]:
        """The first ``n`` readable items of ``ordered``; unreadable ones are quarantined."""
        good, bad = readable_prefix(
            self.ports.store, ordered, n, self.settings.storage.read_concurrency
        )
        if bad:
            self.state.mark_corrupt(bad)
            log.warning("%d unreadable pool items quarantined, e.g. %s: %s", len(bad), *bad[0])
        return good

    def _labeled(self, split: str) -> list[tuple[Path, int]]:
        """Labeled items of a split as cached files with class indices."""
        rows = self.state.labeled_items(split)
        known = [(i, e, lab) for i, e, lab in rows if lab in self.class_index]
        paths = self.ports.cache.ensure_many(
            self.ports.store,
            [(i, e) for i, e, _ in known],
            max_workers=self.settings.storage.read_concurrency,
        )
        out = []
        for item, _etag, lab in known:
            path = paths[item]
            if isinstance(path, Path):
                out.append((path, self.class_index[lab]))
            else:
                log.warning("labeled item %s cannot be read (%s); left out of training", item, path)
        return out

    def model_version(self, rnd: Round) -> str:
        """Names the round and the config, e.g. ``al-r0003-entropy-1a2b3c4d``."""
        config = json.dumps(
            {
                "model": self.settings.model.model_dump(mode="json"),
                "strategy": rnd.strategy,
                "params": rnd.params,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(config.encode()).hexdigest()[:8]
        return f"al-r{rnd.round:04d}-{rnd.strategy}-{digest}"

    def round_dir(self, number: int) -> Path:
        path = self.rounds_dir / f"{number:04d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def status(self) -> dict[str, Any]:
        current = self.state.current_round()
        out: dict[str, Any] = {
            "items": self.state.count_items(),
            "paused": self.state.get_meta(PAUSED) == "1",
        }
        if current is not None:
            done, total = self.state.batch_progress(current.round)
            out["round"] = {
                "number": current.round,
                "phase": current.phase.value,
                "strategy": current.strategy,
                "model_version": current.model_version,
                "batch_done": done,
                "batch_total": total,
                "started_at": iso(current.started_at),
                "error": current.error,
            }
        return out
