"""A whole round from scoring through selection, with the compiled kernels on and off.

    .venv/bin/python -m benchmarks round            # 100,000 images
    .venv/bin/python -m benchmarks round --quick    # 5,000 images
    .venv/bin/python -m benchmarks.round --n 20000 --repeat 5

What a round does once its model is trained, on a pool of random 32x32 grayscale PNGs in
a local folder (written first, not timed as part of the round):

- scoring: ``score_store`` over a ``LocalStore`` with an untrained ``small_cnn`` at
  32 px, K = 20 MC-dropout samples, C = 10 classes, batches of 256 (reads, PNG decoding,
  the model, results reduced into ``PoolOutputs``). Run once: it does not touch the
  ``-sum p log p`` kernels.
- selection of 100 by BALD and by BatchBALD (registry defaults): ``select`` and then the
  round's score diagnostics (``connector.rounds.report.score_diagnostics``, which scores
  the whole pool again for its histogram), as the round engine runs them. Each is timed
  with the compiled kernels on and off (``strategies.use_compiled_kernels``) in this
  process on the same outputs, interleaved, best of ``--repeat``.

The kernel's saving for a strategy is (selection off - selection on), reported as a
share of that strategy's round without the kernel (scoring + selection off). torch runs
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


def select_once(name: str, outputs: PoolOutputs, compiled: bool) -> dict[str, Any]:
    """Seconds of ``select`` and of the round's score diagnostics, and the picks."""
    strategies.use_compiled_kernels(compiled)
    try:
        strategy = get_strategy(name)
        t0 = time.perf_counter()
        sel = strategy.select(outputs, SELECT, np.random.default_rng(0))
        t1 = time.perf_counter()
        score_diagnostics(strategy, outputs, sel)
        t2 = time.perf_counter()
    finally:
        strategies.use_compiled_kernels(True)
    return {"select": t1 - t0, "diagnostics": t2 - t1, "indices": sel.indices.tolist()}


def measure_selection(outputs: PoolOutputs, repeat: int) -> dict[str, Any]:
    """Per strategy and kernel setting: best-of-``repeat`` seconds, interleaved on/off."""
    out: dict[str, Any] = {}
    for name in STRATEGIES:
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for _ in range(repeat):
            for setting in ("on", "off"):
                runs[setting].append(select_once(name, outputs, setting == "on"))
        entry: dict[str, Any] = {}
        for setting, rs in runs.items():
            best = min(rs, key=lambda r: r["select"] + r["diagnostics"])
            entry[setting] = {
                "select_seconds": best["select"],
                "diagnostics_seconds": best["diagnostics"],
                "seconds": best["select"] + best["diagnostics"],
                "all_seconds": [r["select"] + r["diagnostics"] for r in rs],
            }
        # Both paths agree to ~1e-7 nats; on near-tied scores that can reorder picks.
        entry["picks_in_common_on_and_off"] = len(
            set(runs["on"][0]["indices"]) & set(runs["off"][0]["indices"])
        )
        entry["repeatable"] = all(
            r["indices"] == rs[0]["indices"] for rs in runs.values() for r in rs
        )
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.round", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 images")
    parser.add_argument("--n", type=int, default=None, help="pool size (100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="selection runs per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    n = args.n or (5000 if args.quick else 100_000)
    kernels = strategies.compiled_kernels()
    if kernels is None:
        raise SystemExit("strategies._xlogx is not built: nothing to compare (make venv)")
    torch.set_num_threads(args.threads)
    strategies.set_torch_threads(args.threads)
    load_before = os.getloadavg()
    print(
        f"round benchmark: {n:,} PNGs {SIZE}x{SIZE}, small_cnn, K={K}, C={C}, select "
        f"{SELECT}; torch threads {args.threads}; kernels {kernels}; load "
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
        for compiled in (True, False):
            select_once(name, small, compiled)
    selection = measure_selection(outputs, args.repeat)

    rows = []
    head = (
        f"{'strategy':<10} {'scoring s':>10} {'select on':>10} {'select off':>10} "
        f"{'round on':>9} {'round off':>9} {'saving s':>9} {'share':>7}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, entry in selection.items():
        on, off = entry["on"]["seconds"], entry["off"]["seconds"]
        round_on, round_off = scoring_s + on, scoring_s + off
        saving = off - on
        row = {
            "strategy": name,
            "scoring_seconds": scoring_s,
            "selection_on_seconds": on,
            "selection_off_seconds": off,
            "round_on_seconds": round_on,
            "round_off_seconds": round_off,
            "saving_seconds": saving,
            "saving_share_of_round": saving / round_off,
        }
        rows.append(row)
        print(
            f"{name:<10} {scoring_s:>10.2f} {on:>10.3f} {off:>10.3f} {round_on:>9.2f} "
            f"{round_off:>9.2f} {saving:>9.3f} {100 * saving / round_off:>6.2f}%"
        )
    load_after = os.getloadavg()
    print(f"\nselection = select({SELECT}) + the round's score diagnostics, best of {args.repeat}")
    print("share = kernel saving / round without the kernel; the issue's bar is 5%")
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
        "kernels": kernels,
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
