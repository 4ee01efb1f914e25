"""Simulation benchmark on the digits: speed, and AUBC of the learner against the reference.

    .venv/bin/python -m benchmarks.simulation            # speed run + AUBC run
    .venv/bin/python -m benchmarks.simulation --quick    # small smoke run
    .venv/bin/python -m benchmarks.simulation --skip-aubc

Figures:

- speed: 5 strategies x 3 seeds x 10 rounds (20 -> 120 labels, 10 per round), with the
  seeds' all-labels models, end to end (decoding included). Target: <= 300 s.
- aubc: random, entropy, margin and BADGE, 3 seeds, 20 -> 200 labels by 10 (the issue's
  setting), with ``simulate --recommend``'s choice. Reference: a plain small CNN trained
  from scratch with random sampling, AUBC 0.883.
- learner: random and margin, 3 seeds, 20 -> 420 labels by 20, past the size where the
  trainer starts holding out labels (issue 15, item 0): sharp drops (test accuracy
  falling by more than 0.04 between consecutive rounds) per 100 round steps, and the
  training seconds per round.

Settings for digits: 16 px images (the digits are 8x8 originals, 32 px adds nothing),
small_cnn of width 16, default training, 2 worker processes. Writes
``benchmarks/results/simulation.json`` and the figure ``docs/figures/simulation-digits.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from connector.cli.simulate import plot_curves, summary_table
from connector.devtools.datasets import write_digits
from connector.learning.model import ModelSpec
from connector.simulation import SimulationConfig, load_dataset, run_simulation
from connector.simulation.recommend import recommend

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "simulation.json"
FIGURE = ROOT.parent / "docs" / "figures" / "simulation-digits.png"
REFERENCE_AUBC = 0.883
SPEED_STRATEGIES = ("random", "entropy", "margin", "bald", "coreset")


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in load]}


def _run(root: Path, cfg: SimulationConfig, label: str) -> dict[str, Any]:
    before = _machine()
    t0 = time.perf_counter()
    res = run_simulation(load_dataset(root), cfg)
    wall = time.perf_counter() - t0
    print(f"{label}: {wall:.1f} s (load before {before['loadavg_1_5_15']})", flush=True)
    from rich.console import Console

    Console().print(summary_table(res))
    return {"wall_seconds": round(wall, 2), "machine_before": before, "after": _machine(), **res}


def _learner_run(root: Path, spec: ModelSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Sharp drops per 100 round steps past the holdout threshold (about 300 labels)."""
    cfg = SimulationConfig(
        strategies=("random", "margin"),
        seeds=(0,) if args.quick else (0, 1, 2),
        batch=20,
        budget=100 if args.quick else 420,
        spec=spec,
        full_data=False,
        workers=args.workers,
    )
    res = _run(root, cfg, "learner (20 -> 420 labels, b = 20)")
    steps = sum(len(r["accuracy"]) - 1 for r in res["runs"])
    drops = sum(r["sharp_drops"] for r in res["runs"])
    train = [t for r in res["runs"] for t in r["train_seconds"][1:] if t is not None]
    out = {
        "wall_seconds": res["wall_seconds"],
        "machine_before": res["machine_before"],
        "drops_per_100_steps": round(100 * drops / max(1, steps), 2),
        "round_steps": steps,
        "train_seconds_per_round": round(sum(train) / max(1, len(train)), 2),
        "summary": res["summary"],
        "runs": [
            {k: r[k] for k in ("strategy", "seed", "labels", "accuracy", "aubc", "sharp_drops")}
            for r in res["runs"]
        ],
    }
    print(
        f"sharp drops (> 0.04): {out['drops_per_100_steps']} per 100 round steps "
        f"({drops} of {steps}); training {out['train_seconds_per_round']} s per round"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulation")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 strategies, 3 rounds")
    parser.add_argument("--skip-aubc", action="store_true", help="only the speed run")
    parser.add_argument("--skip-speed", action="store_true", help="skip the speed run")
    parser.add_argument("--skip-learner", action="store_true", help="skip the 20 -> 420 run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    spec = ModelSpec(image_size=16, width=16)
    out: dict[str, Any] = {"reference_aubc": REFERENCE_AUBC, "quick": args.quick}
    if RESULTS.exists() and (args.skip_aubc or args.skip_speed or args.skip_learner):
        # keep the figures of the part not run this time
        previous = json.loads(RESULTS.read_text())
        out.update({k: previous[k] for k in ("speed", "aubc", "learner") if k in previous})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        write_digits(root, layout="imagefolder")
        if not args.skip_speed:
            speed_cfg = SimulationConfig(
                strategies=SPEED_STRATEGIES[:2] if args.quick else SPEED_STRATEGIES,
                seeds=(0,) if args.quick else (0, 1, 2),
                budget=50 if args.quick else 120,
                spec=spec,
                workers=args.workers,
            )
            speed = _run(root, speed_cfg, "speed (target <= 300 s)")
            out["speed"] = {
                "wall_seconds": speed["wall_seconds"],
                "target_seconds": 300,
                "machine_before": speed["machine_before"],
                "machine_after": speed["after"],
                "summary": speed["summary"],
                "seeds": speed["seeds"],
            }
        if not args.skip_aubc:
            aubc_cfg = SimulationConfig(
                strategies=("random", "entropy", "margin", "badge"),
                seeds=(0,) if args.quick else (0, 1, 2),
                budget=50 if args.quick else 200,
                spec=spec,
                full_data=False,
                workers=args.workers,
            )
            res = _run(root, aubc_cfg, "aubc (20 -> 200 labels, b = 10)")
            out["aubc"] = {
                "wall_seconds": res["wall_seconds"],
                "machine_before": res["machine_before"],
                "summary": res["summary"],
                "recommendation": recommend(res),
                "runs": [
                    {k: r[k] for k in ("strategy", "seed", "labels", "accuracy", "aubc")}
                    for r in res["runs"]
                ],
            }
            if not args.quick:
                FIGURE.parent.mkdir(parents=True, exist_ok=True)
                plot_curves(res, FIGURE)
            for row in res["summary"]:
                print(
                    f"AUBC {row['strategy']:>8}: {row['aubc_mean']:.4f} ± {row['aubc_std']:.4f}"
                    f"  (reference random, plain CNN: {REFERENCE_AUBC})"
                )
            print(f"recommended: {out['aubc']['recommendation']['reason']}")
        if not args.skip_learner:
            out["learner"] = _learner_run(root, spec, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
