"""Offline active learning on an already-labeled dataset, to choose a strategy.

For each seed: a stratified random test split is held out (never selected), an initial
labeled set is drawn from the rest (the pool) by the cold-start strategy, and a model is
trained on it. Then, for each strategy, rounds of "score the unlabeled pool, select
``batch`` items, reveal their labels, retrain, evaluate on the test split" run until the
budget is spent. Every strategy of a seed starts from the same split, initial set and
initial model, and round ``r`` trains with the same seed for every strategy, so the
strategies differ only by what they selected (a paired comparison).

AUBC, the area under the budget curve, is the normalised trapezoid of test accuracy over
the number of labels ``L_0 < L_1 < ... < L_R`` (the initial set to the budget):
``AUBC = sum_i (L_{i+1} - L_i) * (acc_i + acc_{i+1}) / 2 / (L_R - L_0)``; 1.0 is perfect.
See docs/simulate.md for the JSON schema of the results.
"""

from __future__ import annotations

import csv
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connector.contracts.errors import ConfigError
from connector.learning.images import decode_many, infer_channels
from connector.learning.model import ModelSpec
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig, evaluate_predictions, fit_tensors
from strategies import PoolOutputs, get_strategy

log = logging.getLogger(__name__)

SCHEMA = "al-connector/simulation/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Strategies that read the disagreement between K samples: MC dropout is on for them.
DISAGREEMENT = frozenset(
    {"bald", "batchbald", "variation_ratios", "mean_std", "vote_entropy", "kl_to_consensus"}
)
#: ``progress(event)``: one unit of work done, ``"train"`` (a seed's initial or
#: full-data model) or ``"round"`` (an acquisition round); totals from ``count_work``.
SimProgress = Callable[[str], None]


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class LabeledDataset:
    """Image files with their class index; ``classes`` sorted by name."""

    paths: list[Path]
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str


def load_dataset(path: Path | str) -> LabeledDataset:
    """An ImageFolder tree (one sub-folder per class) or a CSV of ``path,label``.

    CSV paths are relative to the CSV's folder (or absolute). A folder without class
    sub-folders but with a ``labels.csv`` is read through that CSV.
    """
    root = Path(path)
    if root.is_file():
        return _load_csv(root)
    if not root.is_dir():
        raise ConfigError(f"dataset {root} does not exist; pass an ImageFolder tree or a CSV")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        if (root / "labels.csv").is_file():
            return _load_csv(root / "labels.csv")
        raise ConfigError(
            f"{root} has no class sub-folders and no labels.csv; use one folder per class "
            "(ImageFolder layout) or a CSV with columns path,label"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([c] * len(files))
    return _checked(paths, labels, tuple(d.name for d in class_dirs), str(root))


def _load_csv(csv_path: Path) -> LabeledDataset:
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ConfigError(f"{csv_path} needs a header row with columns 'path' and 'label'")
    classes = tuple(sorted({r["label"] for r in rows}))
    index = {c: i for i, c in enumerate(classes)}
    paths = [(csv_path.parent / r["path"]) for r in rows]
    return _checked(paths, [index[r["label"]] for r in rows], classes, str(csv_path))


def _checked(
    paths: list[Path], labels: list[int], classes: tuple[str, ...], source: str
) -> LabeledDataset:
    if len(classes) < 2:
        raise ConfigError(f"{source}: found {len(classes)} class(es); a classifier needs >= 2")
    if not paths:
        raise ConfigError(f"{source}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    return LabeledDataset(paths, np.asarray(labels, dtype=np.int64), classes, source)


# --------------------------------------------------------------------------- settings


def parse_strategy(text: str) -> tuple[str, dict[str, Any]]:
    """``"power:base=bald:beta=2"`` -> ``("power", {"base": "bald", "beta": 2})``.

    Parameters follow the name, each after a colon (commas separate strategies).
    """
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, rest.split(":")):
        key, sep, raw = part.partition("=")
        if not sep:
            raise ConfigError(f"strategy {text!r}: parameter {part!r} must be key=value")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        params[key.strip()] = value
    return name.strip(), params


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``mc_samples=None``: 20 for disagreement strategies, else 1."""

    strategies: tuple[str, ...] = ("random", "entropy", "margin")
    seeds: tuple[int, ...] = (0, 1, 2)
    initial: int = 20
    cold_start: str = "random"
    batch: int = 10
    budget: int = 200
    test_fraction: float = 0.2
    spec: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    mc_samples: int | None = None
    max_candidates: int | None = None
    full_data: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("give at least one strategy")
        for text in (*self.strategies, self.cold_start):
            name, params = parse_strategy(text)
            get_strategy(name, **params)  # raises naming the known strategies
        if self.initial < 2 or self.batch < 1 or self.budget < self.initial:
            raise ConfigError(
                f"need initial >= 2, batch >= 1 and budget >= initial; got initial="
                f"{self.initial}, batch={self.batch}, budget={self.budget}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def mc_for(self, strategy: str) -> int:
        if self.mc_samples is not None:
            return self.mc_samples
        name, params = parse_strategy(strategy)
        uses = {name, *(v for v in params.values() if isinstance(v, str))}
        return 20 if uses & DISAGREEMENT else 1


# --------------------------------------------------------------------------- metrics


def aubc(labels: Sequence[int], accuracy: Sequence[float]) -> float:
    """Normalised trapezoid area under accuracy(labels); the accuracy itself for 1 point."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


def labels_to_reach(labels: Sequence[int], accuracy: Sequence[float], target: float) -> int | None:
    """The first number of labels at which accuracy >= target (None if never)."""
    for n, acc in zip(labels, accuracy, strict=True):
        if acc >= target:
            return int(n)
    return None


# --------------------------------------------------------------------------- engine


@dataclass
class _Data:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]
    cfg: SimulationConfig
    events: Any = None  # a multiprocessing queue in workers, None inline


# The dataset of this process while a simulation runs (a worker's, or the caller's inline).
_CURRENT: dict[str, _Data] = {}


def _init_worker(data: _Data) -> None:
    torch.set_num_threads(1)
    _set_worker(data)


def _emit(data: _Data, event: str, progress: SimProgress | None) -> None:
    if data.events is not None:
        data.events.put(event)
    elif progress is not None:
        progress(event)


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _split(y: np.ndarray, cfg: SimulationConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices: stratified, ``test_fraction`` of every class in the test split."""
    rng = _rng(seed, "split")
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = min(len(idx) - 1, max(1, round(len(idx) * cfg.test_fraction)))
        test.append(rng.choice(idx, size=take, replace=False))
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test_idx), test_idx


def _train_eval(
    data: _Data, idx: np.ndarray, test_idx: np.ndarray, seed: int
) -> tuple[TrainedModel, dict[str, Any], float]:
    t0 = time.perf_counter()
    cfg = replace(data.cfg.train, seed=seed)
    model = fit_tensors(data.x[idx], data.y[idx], data.classes, data.cfg.spec, cfg)
    seconds = time.perf_counter() - t0
    pred = model.predict_tensor(data.x[test_idx]).mean(axis=1).argmax(axis=1)
    metrics = evaluate_predictions(data.y[test_idx].numpy(), pred, data.classes)
    return model, metrics, seconds


def _outputs(
    data: _Data,
    model: TrainedModel,
    cand: np.ndarray,
    labeled: np.ndarray,
    mc: int,
    embeddings: bool,
    seed: int,
) -> PoolOutputs:
    probs = model.predict_tensor(data.x[cand], mc_samples=mc, seed=seed)
    emb = model.embed_tensor(data.x[cand]) if embeddings else None
    lab = model.embed_tensor(data.x[labeled]) if embeddings and len(labeled) else None
    return PoolOutputs(probs_N_K_C=probs, emb_N_D=emb, labeled_emb_M_D=lab)


def _seed_stage(seed: int, progress: SimProgress | None = None) -> dict[str, Any]:
    """Split, cold start, initial model and full-data model of one seed."""
    data = _require_worker()
    cfg = data.cfg
    y = data.y.numpy()
    pool, test = _split(y, cfg, seed)
    if cfg.initial > len(pool):
        raise ConfigError(f"initial={cfg.initial} is larger than the pool ({len(pool)} items)")
    name, params = parse_strategy(cfg.cold_start)
    strategy = get_strategy(name, **params)
    rng = _rng(seed, "cold-start", cfg.cold_start)
    if name == "random":
        initial = pool[rng.permutation(len(pool))[: cfg.initial]]
    elif strategy.needs_embeddings:
        # No label yet: embeddings of an untrained model (pretrained if weights are set).
        blank = TrainedModel.untrained(
            cfg.spec, data.classes, seed=seed, channels=int(data.x.shape[1])
        )
        out = _outputs(data, blank, pool, pool[:0], 1, True, seed)
        uniform = np.full_like(out.probs_N_K_C, 1.0 / len(data.classes))
        sel = strategy.select(replace(out, probs_N_K_C=uniform), cfg.initial, rng)
        initial = pool[sel.indices]
    else:
        raise ConfigError(
            f"cold-start strategy {cfg.cold_start!r} needs a trained model; use random or a "
            "strategy that works on embeddings (kmeans, typiclust, coreset)"
        )
    model, metrics, seconds = _train_eval(data, initial, test, seed * 1000)
    _emit(data, "train", progress)
    full: dict[str, Any] | None = None
    if cfg.full_data:
        _, fm, fs = _train_eval(data, pool, test, seed * 1000 + 999)
        full = {"accuracy": fm["accuracy"], "macro_f1": fm["macro_f1"], "n_labels": len(pool)}
        full["train_seconds"] = round(fs, 3)
        _emit(data, "train", progress)
    return {
        "seed": seed,
        "pool": pool,
        "test": test,
        "initial": initial,
        "model": model,
        "initial_metrics": metrics,
        "initial_seconds": seconds,
        "full": full,
    }


def _require_worker() -> _Data:
    if "data" not in _CURRENT:
        raise RuntimeError("simulation data not set; call through run_simulation")
    return _CURRENT["data"]


def _run_strategy(
    stage: dict[str, Any], strategy_text: str, progress: SimProgress | None = None
) -> dict[str, Any]:
    """The rounds of one strategy from one seed's initial state."""
    data = _require_worker()
    cfg = data.cfg
    seed = int(stage["seed"])
    name, params = parse_strategy(strategy_text)
    strategy = get_strategy(name, **params)
    mc = cfg.mc_for(strategy_text)
    rng = _rng(seed, "select", strategy_text)
    pool, test = stage["pool"], stage["test"]
    labeled = np.asarray(stage["initial"], dtype=np.int64)
    model: TrainedModel = stage["model"]
    metrics = stage["initial_metrics"]
    run: dict[str, Any] = {
        "strategy": strategy_text,
        "seed": seed,
        "mc_samples": mc,
        "labels": [len(labeled)],
        "accuracy": [metrics["accuracy"]],
        "macro_f1": [metrics["macro_f1"]],
        "train_seconds": [round(stage["initial_seconds"], 4)],
        "score_seconds": [],
        "select_seconds": [],
    }
    budget = min(cfg.budget, len(pool))
    rnd = 0
    while len(labeled) < budget:
        rnd += 1
        unlabeled = np.setdiff1d(pool, labeled)
        cand = unlabeled
        if cfg.max_candidates is not None and len(unlabeled) > cfg.max_candidates:
            cand = np.sort(rng.choice(unlabeled, size=cfg.max_candidates, replace=False))
        t0 = time.perf_counter()
        out = _outputs(data, model, cand, labeled, mc, strategy.needs_embeddings, seed + rnd)
        t1 = time.perf_counter()
        sel = strategy.select(out, min(cfg.batch, budget - len(labeled)), rng)
        t2 = time.perf_counter()
        labeled = np.concatenate([labeled, cand[sel.indices]])
        model, metrics, seconds = _train_eval(data, labeled, test, seed * 1000 + rnd)
        run["labels"].append(len(labeled))
        run["accuracy"].append(metrics["accuracy"])
        run["macro_f1"].append(metrics["macro_f1"])
        run["train_seconds"].append(round(seconds, 4))
        run["score_seconds"].append(round(t1 - t0, 4))
        run["select_seconds"].append(round(t2 - t1, 5))
        _emit(data, "round", progress)
    run["aubc"] = aubc(run["labels"], run["accuracy"])
    full = stage["full"]
    for pct in (90, 95):
        target = None if full is None else pct / 100 * full["accuracy"]
        run[f"labels_to_{pct}"] = (
            None if target is None else labels_to_reach(run["labels"], run["accuracy"], target)
        )
    run["final_accuracy"] = run["accuracy"][-1]
    run["selected"] = [int(i) for i in labeled[len(stage["initial"]) :]]
    return run


def count_work(cfg: SimulationConfig, n_pool: int) -> tuple[int, int]:
    """(trainings of the seed stage, acquisition rounds) the simulation will run."""
    budget = min(cfg.budget, n_pool)
    rounds = -(-(budget - cfg.initial) // cfg.batch) if budget > cfg.initial else 0
    per_seed = 2 if cfg.full_data else 1
    return per_seed * len(cfg.seeds), rounds * len(cfg.seeds) * len(cfg.strategies)


def run_simulation(
    dataset: LabeledDataset, cfg: SimulationConfig, progress: SimProgress | None = None
) -> dict[str, Any]:
    """Run every (strategy, seed) and return the JSON-ready result (docs/simulate.md).

    With ``cfg.workers > 1`` the seeds' stages, then the (strategy, seed) runs, go to a
    pool of processes (one torch thread each); results do not depend on ``workers``.
    """
    t_start = time.perf_counter()
    channels = cfg.spec.channels or infer_channels(dataset.paths[:64])
    x, ok, bad = decode_many(dataset.paths, channels, cfg.spec.image_size)
    for i, reason in bad:
        log.warning("dataset image %s left out: %s", dataset.paths[i], reason)
    y = torch.from_numpy(dataset.labels[ok])
    data = _Data(x, y, dataset.classes, cfg)
    decode_s = time.perf_counter() - t_start
    if cfg.workers > 1:
        stages, runs = _run_parallel(data, cfg, progress)
    else:
        _set_worker(data)
        try:
            stages = [_seed_stage(s, progress) for s in cfg.seeds]
            runs = [_run_strategy(st, s, progress) for st in stages for s in cfg.strategies]
        finally:
            _set_worker(None)
    return {
        "schema": SCHEMA,
        "dataset": {
            "source": dataset.source,
            "classes": list(dataset.classes),
            "n_items": len(ok),
            "failures": [[str(dataset.paths[i]), reason] for i, reason in bad],
            "channels": channels,
            "decode_seconds": round(decode_s, 3),
        },
        "config": _config_json(cfg),
        "seeds": [
            {
                "seed": st["seed"],
                "n_pool": len(st["pool"]),
                "n_test": len(st["test"]),
                "initial_accuracy": st["initial_metrics"]["accuracy"],
                "full_data": st["full"],
            }
            for st in stages
        ],
        "runs": runs,
        "summary": summarise(runs, cfg.strategies),
        "elapsed_seconds": round(time.perf_counter() - t_start, 3),
    }


def _set_worker(data: _Data | None) -> None:
    # Inline runs keep the caller's torch thread settings; only the dataset is set.
    if data is None:
        _CURRENT.pop("data", None)
    else:
        _CURRENT["data"] = data


def _run_parallel(
    data: _Data, cfg: SimulationConfig, progress: SimProgress | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch's thread pools start can deadlock
    events = ctx.Queue()
    shared = replace(data, events=events)
    with ProcessPoolExecutor(cfg.workers, ctx, _init_worker, (shared,)) as pool:
        stage_futs = [pool.submit(_seed_stage, s) for s in cfg.seeds]
        stages = _wait(stage_futs, events, progress)
        run_futs = [pool.submit(_run_strategy, st, s) for st in stages for s in cfg.strategies]
        runs = _wait(run_futs, events, progress)
    return stages, runs


def _wait(futs: list[Future[Any]], events: Any, progress: SimProgress | None) -> list[Any]:
    import queue as queue_mod

    while not all(f.done() for f in futs):
        try:
            event = events.get(timeout=0.2)
        except queue_mod.Empty:
            continue
        if progress is not None:
            progress(event)
    while True:  # events that arrived after the last future finished
        try:
            event = events.get_nowait()
        except queue_mod.Empty:
            break
        if progress is not None:
            progress(event)
    return [f.result() for f in futs]


def _config_json(cfg: SimulationConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["strategies"] = list(cfg.strategies)
    out["seeds"] = list(cfg.seeds)
    out["mc_samples"] = {s: cfg.mc_for(s) for s in cfg.strategies}
    return out


def summarise(runs: list[dict[str, Any]], strategies: Sequence[str]) -> list[dict[str, Any]]:
    """Per strategy: mean and std over seeds of AUBC, final accuracy, labels to 90/95%."""
    out: list[dict[str, Any]] = []
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        aubcs = np.array([r["aubc"] for r in rs])
        row: dict[str, Any] = {
            "strategy": s,
            "n_seeds": len(rs),
            "aubc_mean": float(aubcs.mean()),
            "aubc_std": float(aubcs.std(ddof=1)) if len(rs) > 1 else 0.0,
            "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in rs])),
            "select_seconds_mean": float(
                np.mean([np.mean(r["select_seconds"] or [0.0]) for r in rs])
            ),
            "score_seconds_mean": float(
                np.mean([np.mean(r["score_seconds"] or [0.0]) for r in rs])
            ),
        }
        for pct in (90, 95):
            vals = [r[f"labels_to_{pct}"] for r in rs]
            reached = [v for v in vals if v is not None]
            row[f"labels_to_{pct}_mean"] = float(np.mean(reached)) if reached else None
            row[f"labels_to_{pct}_reached"] = len(reached)
        out.append(row)
    return out
