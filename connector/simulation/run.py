"""Offline active learning on an already-labeled dataset, to choose a strategy.

One loop: every (seed, strategy) run is the daemon's own ``RoundEngine`` (the same plan,
cold start, validation split, candidate sampling, MC rule, training and selection code),
driven by an oracle labeling backend that labels each pushed task from ground truth, over
a local store of the dataset. Round 0 draws the random validation split (the test set of
the simulation: ``test_fraction`` of the items, never selected) and the initial labels
(``initial`` items, by the cold start); each later round trains on the labels so far,
evaluates on the validation split, and selects ``batch`` more, until ``budget`` labels.

Every strategy of a seed runs with the same model seed over the same keys, so they share
the validation split, the initial set and the first model, and round ``r`` trains with
the same seed for every strategy: the strategies differ only by what they selected (a
paired comparison). See docs/simulate.md for the JSON schema of the results.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from connector.contracts.learner import Learner
from connector.contracts.ports import ObjectStore
from connector.rounds.context import OVERRIDE_BATCH, Ports
from connector.rounds.engine import RoundEngine
from connector.settings import Settings
from connector.simulation.config import SimulationConfig, parse_strategy
from connector.simulation.dataset import DatasetStore, LabeledDataset, dataset_keys
from connector.simulation.learner import SimulationLearner
from connector.simulation.metrics import aubc, labels_to_reach, sharp_drops, summarise
from connector.simulation.oracle import OracleLabeling
from connector.state import Phase, Round, StateDB
from connector.storage.cache import LabeledCache

log = logging.getLogger(__name__)

SCHEMA = "al-connector/simulation/2"
#: ``progress(event)``: one unit of work done, ``"train"`` (a seed's all-labels model) or
#: ``"round"`` (a trained round); totals from ``count_work``.
SimProgress = Callable[[str], None]


# --------------------------------------------------------------------------- one run


def oracle_engine(
    settings: Settings, store: ObjectStore, truth: Mapping[str, str], learner: Learner
) -> tuple[RoundEngine, OracleLabeling]:
    """The daemon's round engine over ``store``, labeled by an oracle from ``truth``.

    ``settings.labels.classes`` are the classes; the state lives in ``settings.state.dir``.
    """
    classes = list(settings.labels.classes)
    oracle = OracleLabeling(truth, classes)
    cache = LabeledCache(settings.cache_dir(), int(settings.state.cache_max_mb * 1_000_000))
    ports = Ports(StateDB(settings.db_path()), store, oracle, cache)
    return RoundEngine(settings, ports, learner, classes), oracle


@dataclass
class _Job:
    dataset: LabeledDataset
    cfg: SimulationConfig
    events: Any = None  # a multiprocessing queue in workers, None inline
    #: One learner per process, shared by its runs (built on first use, so a job sent to a
    #: worker process carries none).
    _learner: SimulationLearner | None = field(default=None, repr=False)

    def learner(self) -> SimulationLearner:
        if self._learner is None:
            cfg = self.cfg
            self._learner = SimulationLearner(
                cfg.spec, cfg.train, cfg.initial, cfg.semi, cfg.pretraining
            )
        return self._learner


def _emit(job: _Job, event: str, progress: SimProgress | None) -> None:
    if job.events is not None:
        job.events.put(event)
    elif progress is not None:
        progress(event)


def _scratch_root() -> str | None:
    """Where a run keeps its throwaway state db, checkpoints and reports: memory-backed
    ``/dev/shm`` where there is one (the engine's fsyncs cost nothing there), else the
    default temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _settings(job: _Job, seed: int, strategy: str, state_dir: Path) -> Settings:
    name, params = parse_strategy(strategy)
    cfg = job.cfg
    return Settings(
        storage={"kind": "local", "local_root": str(state_dir)},
        labels={"classes": list(job.dataset.classes)},
        model={"seed": seed, "mc_samples": cfg.mc_samples},
        strategy={
            "name": name,
            "params": params,
            "batch_size": cfg.batch,
            "cold_start": cfg.cold_start,
            "max_candidates": cfg.max_candidates,
        },
        validation={"size": cfg.validation_size(len(job.dataset.paths))},
        rounds={"min_labeled_fraction": 1.0, "max_phase_attempts": 1},
        polling={"overlap_seconds": 0.0},
        state={"dir": str(state_dir)},
        server={"port": None},
    )


def _run(
    job: _Job, seed: int, strategy: str, full: bool, progress: SimProgress | None = None
) -> dict[str, Any]:
    """The rounds of one strategy and seed; with ``full``, also the all-labels model."""
    cfg, ds = job.cfg, job.dataset
    root, keys = dataset_keys(ds)
    truth = {k: ds.classes[int(y)] for k, y in zip(keys, ds.labels, strict=True)}
    index = {k: i for i, k in enumerate(keys)}
    with tempfile.TemporaryDirectory(prefix="al-sim-", dir=_scratch_root()) as tmp:
        budget = min(cfg.budget, len(keys) - cfg.validation_size(len(keys)))
        settings = _settings(job, seed, strategy, Path(tmp))
        learner = job.learner()
        learner.encoder_path = Path(tmp) / "encoder" / "encoder.pt"
        engine, oracle = oracle_engine(settings, DatasetStore(root, keys), truth, learner)
        state = engine.state
        engine.ctx.plots = False
        engine.should_stop = lambda rnd: (
            rnd.phase is Phase.SCORE and int(rnd.metrics.get("n_train") or 0) >= budget
        )
        engine.list_pool(full=True)
        state.set_meta(OVERRIDE_BATCH, str(cfg.initial))
        run: dict[str, Any] = {
            "strategy": strategy,
            "seed": seed,
            "mc_samples": cfg.mc_for(strategy),
            **{k: [] for k in ("labels", "accuracy", "macro_f1", "train_seconds")},
            **{k: [] for k in ("score_seconds", "select_seconds")},
        }
        while True:
            rnd = engine.step()
            if rnd is None or rnd.phase is Phase.FAILED:
                raise RuntimeError(f"simulation round failed: {rnd and rnd.error}")
            if rnd.metrics.get("trained"):
                _record(run, rnd)
                _emit(job, "round", progress)
            if rnd.phase is Phase.SCORE:  # the budget is spent
                break
            pushed = sum(1 for t in oracle.pushed if t.split == "train")
            state.set_meta(OVERRIDE_BATCH, str(max(1, min(cfg.batch, budget - pushed))))
        val = sorted(index[k] for k, _, _ in state.labeled_items("validation"))
        selected = [index[t.item_id] for t in oracle.pushed if t.split == "train"]
        full_data = _full_data(job, learner, engine, seed, root, keys, progress) if full else None
        state.close()
    run["aubc"] = aubc(run["labels"], run["accuracy"])
    run["final_accuracy"] = run["accuracy"][-1]
    run["sharp_drops"] = sharp_drops(run["accuracy"])
    run["selected"] = selected[cfg.initial :]
    run["validation"] = val
    run["full_data"] = full_data
    return run


def _record(run: dict[str, Any], rnd: Round) -> None:
    m = rnd.metrics
    run["labels"].append(int(m["n_train"]))
    run["accuracy"].append(m["validation"]["accuracy"])
    run["macro_f1"].append(m["validation"].get("macro_f1"))
    run["train_seconds"].append(m.get("train_seconds"))
    sel = m.get("selection") or {}
    if "score_seconds" in sel:
        run["score_seconds"].append(sel["score_seconds"])
        run["select_seconds"].append(sel.get("select_seconds"))


def _full_data(
    job: _Job,
    learner: Learner,
    engine: RoundEngine,
    seed: int,
    root: Path,
    keys: list[str],
    progress: SimProgress | None,
) -> dict[str, Any]:
    """The all-labels model: every item outside the validation split (``keys`` under
    ``root``, in dataset order), same evaluation."""
    ctx = engine.ctx
    ds = job.dataset
    val = {k for k, _, _ in ctx.state.labeled_items("validation")}
    train = [(root / k, int(y)) for k, y in zip(keys, ds.labels, strict=True) if k not in val]
    t0 = time.perf_counter()
    # Every item outside the validation split is labeled: nothing is left to learn from
    # unlabeled, so this model is supervised whatever the runs' training mode.
    model = (
        job.learner()
        .supervised()
        .fit([p for p, _ in train], [y for _, y in train], ds.classes, seed=seed * 1000 + 999)
    )
    seconds = time.perf_counter() - t0
    val_set = ctx.labeled("validation")
    metrics = learner.evaluate(model, [p for p, _ in val_set], [y for _, y in val_set])
    _emit(job, "train", progress)
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "n_labels": len(train),
        "train_seconds": round(seconds, 3),
    }


# --------------------------------------------------------------------------- all runs


def run_simulation(
    dataset: LabeledDataset, cfg: SimulationConfig, progress: SimProgress | None = None
) -> dict[str, Any]:
    """Run every (strategy, seed) and return the JSON-ready result (docs/simulate.md).

    With ``cfg.workers > 1`` the runs go to a pool of processes (one torch thread each);
    results do not depend on ``workers``. The all-labels model of a seed is trained in
    its first strategy's run.
    """
    t_start = time.perf_counter()
    job = _Job(dataset, cfg)
    tasks = [
        (seed, s, cfg.full_data and i == 0)
        for seed in cfg.seeds
        for i, s in enumerate(cfg.strategies)
    ]
    if cfg.workers > 1:
        runs = _run_parallel(job, tasks, progress)
    else:
        runs = [_run(job, seed, s, full, progress) for seed, s, full in tasks]
    seeds = []
    for seed in cfg.seeds:
        first = next(r for r in runs if r["seed"] == seed)
        seeds.append(
            {
                "seed": seed,
                "n_pool": len(dataset.paths) - len(first["validation"]),
                "n_test": len(first["validation"]),
                "initial_accuracy": first["accuracy"][0],
                "full_data": first["full_data"],
            }
        )
    for r in runs:
        r["full_data"] = next(s["full_data"] for s in seeds if s["seed"] == r["seed"])
        for pct in (90, 95):
            target = None if r["full_data"] is None else pct / 100 * r["full_data"]["accuracy"]
            r[f"labels_to_{pct}"] = (
                None if target is None else labels_to_reach(r["labels"], r["accuracy"], target)
            )
        del r["full_data"]
    return {
        "schema": SCHEMA,
        "dataset": {
            "source": dataset.source,
            "classes": list(dataset.classes),
            "n_items": len(dataset.paths),
        },
        "config": _config_json(cfg),
        "seeds": seeds,
        "runs": runs,
        "summary": summarise(runs, cfg.strategies),
        "elapsed_seconds": round(time.perf_counter() - t_start, 3),
    }


#: The job of this worker process, set by ``_init_worker`` (a queue travels only this way).
_WORKER_JOB: list[_Job] = []


def _init_worker(job: _Job) -> None:
    torch.set_num_threads(1)
    _WORKER_JOB.append(job)


def _run_in_worker(seed: int, strategy: str, full: bool) -> dict[str, Any]:
    return _run(_WORKER_JOB[0], seed, strategy, full)


def _run_parallel(
    job: _Job, tasks: list[tuple[int, str, bool]], progress: SimProgress | None
) -> list[dict[str, Any]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch's thread pools start can deadlock
    events = ctx.Queue()
    shared = _Job(job.dataset, job.cfg, events)
    with ProcessPoolExecutor(job.cfg.workers, ctx, _init_worker, (shared,)) as pool:
        # The runs that also train an all-labels model are the longest: start them first,
        # so that the pool does not end waiting on one of them.
        order = sorted(range(len(tasks)), key=lambda i: not tasks[i][2])
        futs = {i: pool.submit(_run_in_worker, *tasks[i]) for i in order}
        results = _wait([futs[i] for i in order], events, progress)
    by_task = dict(zip(order, results, strict=True))
    return [by_task[i] for i in range(len(tasks))]


def _wait(futs: list[Future[Any]], events: Any, progress: SimProgress | None) -> list[Any]:
    import queue as queue_mod

    def drain(block: bool) -> None:
        try:
            event = events.get(timeout=0.2) if block else events.get_nowait()
        except queue_mod.Empty:
            return
        if progress is not None:
            progress(event)

    while not all(f.done() for f in futs):
        drain(block=True)
    while not events.empty():  # events that arrived after the last future finished
        drain(block=False)
    return [f.result() for f in futs]


def _config_json(cfg: SimulationConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["strategies"] = list(cfg.strategies)
    out["seeds"] = list(cfg.seeds)
    out["mc_samples"] = {s: cfg.mc_for(s) for s in cfg.strategies}
    return out
