"""The phases of a round: INGEST, TRAIN, SCORE, SELECT, PUSH. WAIT is the engine's.

Each function reads the state db and the ports through a ``RoundContext``, does its
work, and commits the next phase before returning, so a crash anywhere resumes from the
last committed phase. SELECT freezes the selection (with its scores) and moves to PUSH
in one transaction; pushes are idempotent and committed chunk by chunk.

Round 0 is the cold start: a random validation split (labeled first, never chosen by a
strategy) and a first batch. Any round without a trained model selects with the plan's
cold-start strategy (``rounds.plan``); an untrained model's guesses are never pushed as
prelabels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import cast

import numpy as np

from connector.contracts.errors import CheckpointError
from connector.contracts.learner import CoupledLearner, PretrainingLearner
from connector.contracts.ports import TaskToPush
from connector.rounds import dedupe, inflight, insight, report
from connector.rounds.context import NEXT_ROUND_ONLY, RoundContext, ScoredPool
from connector.rounds.plan import RoundPlan
from connector.rounds.selection import Pick, picks, sample_candidates
from connector.rounds.unlabeled import MAX_KEYS as MAX_UNLABELED_KEYS
from connector.rounds.unlabeled import StorePool
from connector.state import Phase, Round, SelectedItem
from strategies import ItemScorer, PoolOutputs, Selection, item_scores, trains

log = logging.getLogger(__name__)


def ingest(ctx: RoundContext, rnd: Round, poll: Callable[[], object]) -> None:
    """List the pool and poll labels (``poll`` is the engine's), then snapshot the labels
    this round trains and evaluates on."""
    poll()
    n = ctx.state.snapshot_labels(rnd.round)
    metrics = {"labels": n, "items": ctx.state.count_items()}
    has_train = bool(ctx.state.labeled_items("train"))
    nxt = Phase.TRAIN if rnd.round > 0 and has_train else Phase.SCORE
    ctx.state.set_phase(rnd.round, nxt, metrics=metrics)


def train(ctx: RoundContext, rnd: Round) -> None:
    train_set = ctx.labeled("train")
    val = ctx.labeled("validation")
    if len({lab for _, lab in train_set}) < 2:
        log.warning("round %d: fewer than 2 classes labeled; no model yet", rnd.round)
        ctx.state.set_phase(rnd.round, Phase.SCORE, metrics={"trained": False})
        return
    pool = _unlabeled(ctx, rnd)
    pretrained = _pretrain(ctx, rnd, pool)
    # A training-coupled strategy (loss prediction, VAAL, WAAL) has its networks trained
    # with the model; the plan has checked that the learner can (``plan.check_learner``).
    need = trains(ctx.resolve(rnd).build())
    fit = ctx.learner.fit
    if need is not None:
        fit = partial(cast(CoupledLearner, ctx.learner).fit, trains=need)
    t0 = time.perf_counter()
    model = fit(
        [p for p, _ in train_set],
        [y for _, y in train_set],
        ctx.classes,
        seed=ctx.cfg.seed + rnd.round,
        progress=ctx.progress,
        unlabeled=pool,
    )
    train_s = time.perf_counter() - t0
    evaluation = (
        ctx.learner.evaluate(model, [p for p, _ in val], [y for _, y in val])
        if val
        else {"n": 0, "accuracy": None}
    )
    version = ctx.model_version(rnd)
    ctx.learner.save(
        model,
        ctx.round_dir(rnd.round) / "model.pt",
        {
            "round": rnd.round,
            "model_version": version,
            "classes": ctx.classes,
            "settings": ctx.cfg.model_identity,
            "label_map": ctx.cfg.label_map,
        },
    )
    log.info(
        "round %d (%s): trained on %d labels; validation accuracy %s on %d",
        rnd.round,
        version,
        len(train_set),
        evaluation.get("accuracy"),
        evaluation["n"],
    )
    metrics = {
        "trained": True,
        "n_train": len(train_set),
        "train_seconds": round(train_s, 2),
        "validation": evaluation,
    }
    if pretrained is not None:
        metrics["pretrain"] = pretrained
    ctx.state.set_phase(rnd.round, Phase.SCORE, metrics=metrics, model_version=version)


def _unlabeled(ctx: RoundContext, rnd: Round, exclude: frozenset[str] = frozenset()) -> StorePool:
    """The candidates (less ``exclude``) as an ``UnlabeledPool`` read from the store."""
    rng = ctx.rng(rnd, "unlabeled")

    def keys() -> list[str]:  # listed on first use only: a supervised learner never asks
        ids = (i for i in ctx.state.iter_candidate_ids() if i not in exclude)
        return sample_candidates(ids, MAX_UNLABELED_KEYS, rng)

    return StorePool(ctx.ports.store, keys, read_concurrency=ctx.cfg.read_concurrency)


def _pretrain(ctx: RoundContext, rnd: Round, pool: StorePool) -> dict[str, object] | None:
    """Self-supervised pre-training of the learner's encoder on ``pool`` when the learner
    does it and it is due this round (``learning.selfsup``); what it did, or None."""
    due = getattr(ctx.learner, "pretrain_due", None)
    if due is None or not due(rnd.round):
        return None
    learner = cast(PretrainingLearner, ctx.learner)
    info = learner.pretrain(
        pool, round=rnd.round, seed=ctx.cfg.seed + rnd.round, progress=ctx.progress
    )
    log.info("round %d: encoder pre-trained (%s)", rnd.round, info)
    return info


def score(ctx: RoundContext, rnd: Round) -> None:
    """Read the candidates with the round's model (or, without one, the cold start's)."""
    plan = ctx.resolve(rnd)
    candidates = sample_candidates(
        ctx.state.iter_candidate_ids(), plan.max_candidates, ctx.rng(rnd, "candidates")
    )
    pinned = [c for c in ctx.state.pinned_candidates() if c]
    pinned_set = set(pinned)
    ids = pinned + [c for c in candidates if c not in pinned_set]
    pool = ScoredPool(ids, len(pinned))
    pool.diagnostics = {"candidates": len(ids) - len(pinned), "pinned": len(pinned)}
    if rnd.round == 0 and ctx.cfg.validation_size:
        # Drawn before anything reads the pool to train (a cold-start pre-training), so
        # that the validation images stay out of training; SELECT freezes this draw.
        rest = ids[len(pinned) :]
        order = _validation_order(ctx.rng(rnd, "select"), rest)
        pool.validation = ctx.readable(order, min(ctx.cfg.validation_size, len(rest)))
    trained = bool(rnd.metrics.get("trained"))
    strategy = plan.strategy_for(trained)
    model = None
    if trained:
        try:
            model = ctx.learner.load(ctx.round_dir(rnd.round) / "model.pt")
        except CheckpointError as exc:
            # Never score with part of a model: train again; Label Studio keeps showing
            # the previous round's predictions meanwhile (its model version moves at PUSH).
            log.warning("round %d: %s; training again", rnd.round, exc)
            ctx.state.set_phase(rnd.round, Phase.TRAIN)
            return
    elif strategy.needs_embeddings:
        # Embeddings of the initial model: pretrained when the user gave weights, and
        # self-supervised on the pool when the learner pre-trains (``learning.selfsup``).
        info = _pretrain(ctx, rnd, _unlabeled(ctx, rnd, frozenset(pool.validation or ())))
        if info is not None:
            pool.diagnostics["pretrain"] = info
        model = ctx.learner.init_model(ctx.classes, seed=ctx.cfg.seed)
    if model is not None:
        t0 = time.perf_counter()
        # In this process, or shards on a Ray cluster that read the bucket themselves
        # (``connector.scoring``); the same outputs either way.
        scored = ctx.scorer.score_keys(
            model,
            ids,
            with_embeddings=strategy.needs_embeddings,
            mc_samples=plan.mc_samples if trained else 1,
            seed=ctx.cfg.seed * 100_003 + rnd.round,
            progress=ctx.progress,
        )
        pool.diagnostics["score_seconds"] = round(time.perf_counter() - t0, 2)
        if scored.info:
            pool.diagnostics["scoring"] = scored.info
        if scored.failures:
            n_bad = ctx.state.mark_corrupt(scored.failures)
            pool.diagnostics["unreadable"] = [{"item": i, "reason": r} for i, r in scored.failures]
            log.warning("round %d: %d unreadable pool items quarantined", rnd.round, n_bad)
        out = scored.outputs
        need = trains(strategy)
        if need is not None and (out.aux is None or need not in out.aux):
            # The strategy changed to a coupled one after this round's model was trained.
            log.warning("round %d: strategy needs a model trained with %s; training again",
                        rnd.round, need)  # fmt: skip
            ctx.state.set_phase(rnd.round, Phase.TRAIN)
            return
        if trained and isinstance(strategy, ItemScorer):
            # Only a per-item score can be compared between labeled and unlabeled items.
            pool.labeled = _score_labeled(ctx, rnd, model, plan, strategy.needs_embeddings)
        if strategy.needs_embeddings and trained:
            labeled = ctx.labeled("train")
            emb = ctx.learner.embed_labeled(model, [p for p, _ in labeled])
            out = replace(out, labeled_emb_M_D=emb)
        pool.outputs, pool.trained = out, trained
    ctx.scored[rnd.round] = pool
    ctx.state.set_phase(rnd.round, Phase.SELECT)


def _score_labeled(
    ctx: RoundContext, rnd: Round, model: object, plan: RoundPlan, with_embeddings: bool
) -> object:
    """The model's outputs on a random sample of the labeled training items, for the
    report's labeled-vs-unlabeled check (``rounds.insight``); with embeddings when the
    strategy's score needs them (BADGE's gradient norm)."""
    labeled = [p for p, _ in ctx.labeled("train")]
    if not labeled:
        return None
    rng = ctx.rng(rnd, "labeled-sample")
    take = rng.permutation(len(labeled))[: insight.LABELED_SAMPLE]
    paths = [labeled[i] for i in take.tolist()]
    return ctx.learner.score(
        model,
        ((str(p), p.read_bytes()) for p in paths),
        with_embeddings=with_embeddings,
        mc_samples=plan.mc_samples,
        seed=ctx.cfg.seed * 100_003 + rnd.round + 1,
    ).outputs


def _validation_order(rng: np.random.Generator, rest: list[str]) -> list[str]:
    """The candidates in the order the validation split takes readable ones from."""
    return [rest[i] for i in rng.permutation(len(rest))]


def select(ctx: RoundContext, rnd: Round) -> None:
    """Validation split (round 0), pinned items, then the strategy's picks; frozen."""
    pool = ctx.scored.get(rnd.round)
    if pool is None:
        log.info("round %d: the scores did not survive a restart; scoring again", rnd.round)
        ctx.state.set_phase(rnd.round, Phase.SCORE)
        return
    plan = ctx.resolve(rnd)
    rng = ctx.rng(rnd, "select")
    pinned, rest = pool.ids[: pool.n_pinned], pool.ids[pool.n_pinned :]
    selected: list[SelectedItem] = []
    if rnd.round == 0 and ctx.cfg.validation_size:
        _validation_order(rng, rest)  # the draws SCORE made, so the rest match them
        val_ids = pool.validation or []
        selected += [
            SelectedItem(i, item, "validation", None, None, None) for i, item in enumerate(val_ids)
        ]
        taken = set(val_ids)
        rest = [c for c in rest if c not in taken]
    k = max(0, plan.batch_size - len(pinned))
    diagnostics = dict(pool.diagnostics)
    if pool.outputs is None:
        # Random cold start: no model reads the pool, so readability is checked here.
        chosen: list[Pick] = [(i, None, None, None) for i in pinned]
        shuffled = [rest[i] for i in rng.permutation(len(rest))]
        chosen += [(i, None, None, None) for i in ctx.readable(shuffled, k)]
        diagnostics["strategy"] = plan.cold_start
    else:
        chosen = _choose(ctx, rnd, plan, pool, (pinned, rest, k), rng, diagnostics)
    base = len(selected)
    for j, (item, item_score, pred, conf) in enumerate(chosen):
        selected.append(SelectedItem(base + j, item, "train", item_score, pred, conf))
    report.write_selection(ctx.round_dir(rnd.round), rnd, selected, diagnostics, plot=ctx.plots)
    ctx.state.set_phase(
        rnd.round,
        Phase.SELECT,
        metrics={"selection": {k2: v for k2, v in diagnostics.items() if k2 != "pool_scores"}},
    )
    # Overrides meant for this round only end with its freeze, in the same transaction.
    ctx.state.freeze_selection(rnd.round, selected, clear_meta=NEXT_ROUND_ONLY)
    ctx.scored.pop(rnd.round, None)
    log.info(
        "round %d: selection of %d frozen (%s)", rnd.round, len(selected), diagnostics["strategy"]
    )


def _choose(
    ctx: RoundContext,
    rnd: Round,
    plan: RoundPlan,
    pool: ScoredPool,
    split: tuple[list[str], list[str], int],
    rng: np.random.Generator,
    diagnostics: dict[str, object],
) -> list[Pick]:
    pinned, rest, k = split
    strategy = plan.strategy_for(pool.trained)
    out: PoolOutputs = pool.outputs
    pos = {item: j for j, item in enumerate(out.ids or [])}
    pin_rows = [pos[i] for i in pinned if i in pos]
    rest_rows = np.asarray([pos[i] for i in rest if i in pos], dtype=np.int64)
    sub = out.subset(rest_rows)
    t1 = time.perf_counter()
    sel: Selection = strategy.select(sub, k, rng)
    diagnostics["select_seconds"] = round(time.perf_counter() - t1, 3)
    diagnostics["strategy"] = sel.strategy
    diagnostics.update(report.score_diagnostics(strategy, sub, sel))
    scores = diagnostics.get("pool_scores")
    if isinstance(scores, np.ndarray) and pool.trained:
        labeled = None if pool.labeled is None else item_scores(strategy, pool.labeled)
        diagnostics.update(
            insight.round_checks(
                ctx.round_dir(rnd.round),
                ctx.cfg.rounds_dir / f"{rnd.round - 1:04d}",
                list(sub.ids or []),
                scores,
                labeled,
                sel.strategy,
                k,
            )
        )
    chosen = picks(out, pin_rows, rest_rows, sel, ctx.classes)
    if not pool.trained:
        # An untrained model's guesses are noise: no prelabel rather than a wrong one.
        chosen = [(item, s, None, None) for item, s, _, _ in chosen]
    return chosen


def push(ctx: RoundContext, rnd: Round) -> None:
    """Withdraw earlier rounds' open training tasks, then import this round's in priority
    order: Label Studio serves tasks in import order (docs/labelstudio.md)."""
    if inflight.must_wait(ctx, rnd):
        return
    version = rnd.model_version or ctx.model_version(rnd)
    _withdraw_stale(ctx, rnd)
    # The same image under another key is pushed once (``rounds.dedupe``).
    pending, n_duplicates = dedupe.drop_duplicates(ctx, rnd, ctx.state.unpushed(rnd.round))
    # An item already queued or labeled is re-queued only on purpose (`items requeue`),
    # except when that task is this push's own import, polled before it was recorded.
    landed = set(ctx.state.polled_before_recorded([s.item_id for s in pending]))
    refused = set(
        ctx.state.refuse_repush(
            rnd.round,
            [s.item_id for s in pending if s.item_id not in landed],
            "To send one again, run `al-connector items requeue KEY`",
        )
    )
    pending = [s for s in pending if s.item_id not in refused]
    chunk_size = ctx.cfg.import_chunk_size
    for start in range(0, len(pending), chunk_size):
        chunk = pending[start : start + chunk_size]
        tasks = [
            TaskToPush(
                item_id=s.item_id,
                image_url=ctx.ports.store.url_for(s.item_id),
                round=rnd.round,
                split="validation" if s.split == "validation" else "train",
                priority=s.rank,
                predicted_label=s.predicted_label,
                confidence=s.confidence,
                acquisition_score=s.score,
            )
            for s in chunk
        ]
        inflight.mark(ctx, rnd, [s.item_id for s in chunk])
        try:
            mapping = ctx.ports.labeling.push(tasks, version)
        except Exception:
            # The process lived: the adapter reconciled what it could, and an outage
            # must not add the wait. The mark stays only when the process dies here.
            inflight.clear(ctx)
            raise
        missing = [s.item_id for s in chunk if s.item_id not in mapping]
        if missing:
            raise RuntimeError(
                f"push returned no task for {len(missing)} items, e.g. "
                f"{missing[0]}; the next attempt reconciles and retries"
            )
        ctx.state.record_push(rnd.round, mapping, {s.item_id: s.split for s in chunk})
        inflight.clear(ctx)
        if ctx.progress:
            ctx.progress("push", min(start + chunk_size, len(pending)), len(pending))
    if rnd.model_version is not None:
        # The import already made it the project's version (the adapter cleared the old
        # one first); this is the fallback for a backend that does not.
        ctx.ports.labeling.set_model_version(version)
    done, total = ctx.state.batch_progress(rnd.round)
    ctx.state.set_phase(
        rnd.round, Phase.WAIT, metrics={"pushed": total, "duplicates": n_duplicates}
    )
    finished = ctx.state.get_round(rnd.round)
    assert finished is not None
    report.write_round_report(ctx.round_dir(rnd.round), finished, done, total, plot=ctx.plots)
    log.info(
        "round %d (%s): %d tasks in Label Studio; waiting for labels", rnd.round, version, total
    )


def _withdraw_stale(ctx: RoundContext, rnd: Round) -> None:
    """Earlier rounds' training tasks nobody opened are older picks of an older model and
    would be served before this round's (lower task ids): delete them, and put their items
    back in the pool for the next round's strategy to rank again. Annotated or skipped ones
    stay; a retry after a crash finds the deleted ones gone and finishes the bookkeeping."""
    stale = ctx.state.stale_open_tasks(rnd.round)
    if not stale:
        return
    gone = set(ctx.ports.labeling.withdraw_tasks([t for _, t in stale]))
    n = ctx.state.release_stale(rnd.round, [i for i, t in stale if t in gone])
    log.info(
        "round %d: %d open tasks of earlier rounds withdrawn, their items back in the pool",
        rnd.round,
        n,
    )
