"""A whole round from scoring through selection: where a round's time goes.

    .venv/bin/python -m benchmarks round            # 100,000 images
    .venv/bin/python -m benchmarks round --quick    # 5,000 images
    .venv/bin/python -m benchmarks.round --n 20000 --repeat 5

What a round does once its model is trained, on a pool of random 32x32 grayscale PNGs in
a local folder (written first, not timed as part of the round):

- scoring: ``score_store`` over a ``LocalStore`` with an untrained ``small_cnn`` at
  32 px, K = 20 MC-dropout samples, C = 10 classes, batches of 256 (reads, PNG decoding,
  the model, results reduced into ``PoolOutputs``). Run once.
- selection of 100 by BALD and by BatchBALD (registry defaults): ``select`` and then the
  round's score diagnostics (``connector.rounds.report.score_diagnostics``, which scores
  the whole pool again for its histogram), as the round engine runs them; best of
  ``--repeat``.

Selection's share of the round bounds what any speed-up of the acquisition functions can
save. This benchmark decided the fate of the compiled ``-sum p log p`` kernel: at 100k it
saved 0.04 s of a 37.4 s round (0.11 %; commit 1553dc9), so it was removed. torch runs
on one thread (``--threads``), the strategies' default. Prints a table and writes
``benchmarks/results/round.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import strategies
from connector.learning.model import ModelSpec
from connector.learning.scoring import score_store
from connector.learning.trained import TrainedModel
from connector.rounds.report import score_diagnostics
from connector.storage.local import LocalStore
from strategies import PoolOutputs, get_strategy

RESULTS = Path(__file__).resolve().parent / "results" / "round.json"
K, C, SIZE, BATCH, SELECT = 20, 10, 32, 256, 100
STRATEGIES = ("bald", "batchbald")


def make_images(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` PNG files of uniform random 32x32 grayscale pixels."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)).save(
            buf, format="PNG"
        )
        key = f"img-{i:06d}.png"
        (root / key).write_bytes(buf.getvalue())
        keys.append(key)
    return keys


def select_once(name: str, outputs: PoolOutputs) -> dict[str, Any]:
    """Seconds of ``select`` and of the round's score diagnostics, and the picks."""
    strategy = get_strategy(name)
    t0 = time.perf_counter()
    sel = strategy.select(outputs, SELECT, np.random.default_rng(0))
    t1 = time.perf_counter()
    score_diagnostics(strategy, outputs, sel)
    t2 = time.perf_counter()
    return {"select": t1 - t0, "diagnostics": t2 - t1, "indices": sel.indices.tolist()}


def measure_selection(outputs: PoolOutputs, repeat: int) -> dict[str, Any]:
    """Per strategy: the best of ``repeat`` runs, and whether every run picked the same."""
    out: dict[str, Any] = {}
    for name in STRATEGIES:
        runs = [select_once(name, outputs) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["select"] + r["diagnostics"])
        out[name] = {
            "select_seconds": best["select"],
            "diagnostics_seconds": best["diagnostics"],
            "seconds": best["select"] + best["diagnostics"],
            "all_seconds": [r["select"] + r["diagnostics"] for r in runs],
            "repeatable": all(r["indices"] == runs[0]["indices"] for r in runs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.round", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 images")
    parser.add_argument("--n", type=int, default=None, help="pool size (100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="selection runs per strategy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    n = args.n or (5000 if args.quick else 100_000)
    torch.set_num_threads(args.threads)
    strategies.set_torch_threads(args.threads)
    load_before = os.getloadavg()
    print(
        f"round benchmark: {n:,} PNGs {SIZE}x{SIZE}, small_cnn, K={K}, C={C}, select "
        f"{SELECT}; torch threads {args.threads}; load "
        f"{load_before[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    model = TrainedModel.untrained(
        ModelSpec(arch="small_cnn", image_size=SIZE), [str(c) for c in range(C)], channels=1
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pool"
        t0 = time.perf_counter()
        keys = make_images(root, n)
        write_s = time.perf_counter() - t0
        print(f"wrote {n:,} PNGs in {write_s:.1f} s (not part of the round)", flush=True)
        t0 = time.perf_counter()
        res = score_store(model, LocalStore(root), keys, mc_samples=K, batch_size=BATCH)
        scoring_s = time.perf_counter() - t0
    if res.n != n or res.failures:
        raise RuntimeError(f"scored {res.n} of {n}; failures {res.failures[:3]}")
    print(f"scoring: {scoring_s:.2f} s ({res.timings})", flush=True)
    outputs = res.outputs
    # Warm-up: first calls pay for imports and torch's lazy initialisation.
    small = outputs.subset(np.arange(min(n, 500)))
    for name in STRATEGIES:
        select_once(name, small)
    selection = measure_selection(outputs, args.repeat)

    rows = []
    head = (
        f"{'strategy':<10} {'scoring s':>10} {'select s':>9} {'diagnostics s':>13} "
        f"{'round s':>8} {'selection share':>15}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, entry in selection.items():
        sel_s = entry["seconds"]
        round_s = scoring_s + sel_s
        rows.append(
            {
                "strategy": name,
                "scoring_seconds": scoring_s,
                "selection_seconds": sel_s,
                "round_seconds": round_s,
                "selection_share_of_round": sel_s / round_s,
            }
        )
        print(
            f"{name:<10} {scoring_s:>10.2f} {entry['select_seconds']:>9.3f} "
            f"{entry['diagnostics_seconds']:>13.3f} {round_s:>8.2f} {100 * sel_s / round_s:>14.2f}%"
        )
    load_after = os.getloadavg()
    print(f"\nselection = select({SELECT}) + the round's score diagnostics, best of {args.repeat}")
    print(f"load average after: {load_after[0]:.2f} (1 min)")
    meta = {
        "command": "python -m benchmarks round" + (" --quick" if args.quick else ""),
        "n": n,
        "k": K,
        "c": C,
        "image_size": SIZE,
        "batch": BATCH,
        "select": SELECT,
        "repeat": args.repeat,
        "torch_threads": args.threads,
        "write_pngs_seconds": write_s,
        "scoring_timings": res.timings,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rows": rows, "selection": selection}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
