"""Time and peak memory of the acquisition strategies at pool scale.

    python -m benchmarks.strategies            # pools of 10k and 100k (a few minutes)
    python -m benchmarks.strategies --quick    # 10k only

Synthetic pool: 10 classes, K = 20 MC samples, D = 512, float32; logits from 200
prototypes plus per-item noise of varying scale (so items differ in epistemic
uncertainty and are redundant, as real pools are), embeddings from the same prototypes.
Peak memory above the input is measured two ways and the larger is reported:
tracemalloc (every numpy allocation, exact, not torch's) and the process RSS sampled
every 2 ms in a thread (everything, including torch; a lower bound when freed memory is
reused). Prints a table and writes ``benchmarks/results/strategies.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

import strategies
from strategies import PoolOutputs, get_strategy

RESULTS = Path(__file__).resolve().parent / "results" / "strategies.json"
K, C, D = 20, 10, 512
MB = 1024 * 1024


@dataclass
class Row:
    case: str
    n: int
    k: int | None
    seconds: float
    peak_mb: float
    tracemalloc_mb: float
    rss_mb: float
    figure: str = ""
    target: str = ""
    passed: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)


def make_pool(n: int, k: int = K, seed: int = 0, labeled: int = 1000) -> PoolOutputs:
    """A synthetic pool of n items (see the module docstring)."""
    rng = np.random.default_rng(seed)
    protos = 200
    group = rng.integers(protos, size=n)
    mu = rng.normal(0.0, 3.0, size=(protos, C)).astype(np.float32)
    scale = rng.uniform(0.1, 2.0, size=(n, 1, 1)).astype(np.float32)
    logits = (mu[group] + rng.standard_normal((n, C), dtype=np.float32))[:, None, :]
    logits = logits + scale * rng.standard_normal((n, k, C), dtype=np.float32)
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    centres = rng.standard_normal((protos, D), dtype=np.float32) * 2.0
    emb = centres[group] + rng.standard_normal((n, D), dtype=np.float32)
    lab = centres[rng.integers(protos, size=labeled)] + rng.standard_normal(
        (labeled, D), dtype=np.float32
    )
    return PoolOutputs(probs, emb, lab, ids=None)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory allocated inside the block, by tracemalloc and by sampled RSS."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.tracemalloc_mb = 0.0
        self.rss_mb = 0.0
        self._stop = threading.Event()
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._base = _rss()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        tracemalloc.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self._peak = max(self._peak, _rss())
        self._stop.set()
        self._thread.join()
        self.tracemalloc_mb = peak / MB
        self.rss_mb = (self._peak - self._base) / MB


def measure(fn: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """(seconds, tracemalloc MB, RSS MB, result) of one call."""
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.tracemalloc_mb, mem.rss_mb, out


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    fn()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return float(best)


#: (registry name, params, k, time limit s at 100k, memory limit at 100k in MB or None)
SELECTORS: list[tuple[str, dict[str, Any], int, float | None, str | None]] = [
    ("batchbald", {}, 100, 60.0, "1024"),
    ("batchbald", {"pool_limit": None}, 100, None, None),
    ("coreset", {}, 1000, 30.0, "N*D"),
    ("badge", {}, 1000, 60.0, "N*D"),
    ("power", {"base": "bald"}, 1000, None, None),
    ("cluster_margin", {}, 100, None, None),
    ("kmeans", {}, 100, None, None),
    ("typiclust", {}, 100, None, None),
    ("random", {}, 1000, None, None),
]


def _warm_up() -> None:
    small = make_pool(300, labeled=20)
    for name, params, *_ in SELECTORS:
        get_strategy(name, **params).select(small, 5, np.random.default_rng(0))


def run_selectors(n: int, full: bool) -> list[Row]:
    outputs = make_pool(n)
    nd_mb = n * D * 4 / MB
    rows = []
    for name, params, k, limit_s, limit_mem in SELECTORS:
        strategy = get_strategy(name, **params)
        seconds, tm, rss, sel = measure(
            partial(strategy.select, outputs, k, np.random.default_rng(0))
        )
        label = name + "".join(f" {p}={v}" for p, v in params.items())
        peak = max(tm, rss)
        row = Row(label, n, k, seconds, peak, tm, rss, info=dict(sel.info))
        if full and limit_s is not None:
            mem_limit = nd_mb if limit_mem == "N*D" else float(limit_mem or "inf")
            mem_text = "N*D*4 B" if limit_mem == "N*D" else f"{limit_mem} MB"
            row.target = f"<= {limit_s:.0f} s, <= {mem_text} ({mem_limit:.0f} MB)"
            row.passed = seconds <= limit_s and peak <= mem_limit
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def run_scorers(n_pool: int, full: bool) -> list[Row]:
    """Throughput of the per-item scorers: K = 1 on 10 x the pool, K = 20 on the pool."""
    rows = []
    n1 = 10 * n_pool
    rng = np.random.default_rng(1)
    p1 = rng.dirichlet(np.ones(C), size=(n1, 1)).astype(np.float32)
    for name in ("entropy", "margin", "least_confidence", "ratio"):
        fn = strategies.SCORERS[name]
        seconds = best_of(partial(fn, p1))
        _, tm, rss, _ = measure(partial(fn, p1))
        rate = n1 / seconds
        row = Row(f"{name} (K=1)", n1, None, seconds, max(tm, rss), tm, rss)
        row.figure = f"{rate / 1e6:.1f} M items/s"
        if name in ("entropy", "margin") and full:
            row.target = ">= 5 M items/s"
            row.passed = rate >= 5e6
        rows.append(row)
        print(_format(row), flush=True)
    probs = make_pool(n_pool, labeled=0).probs_N_K_C
    read = best_of(probs.sum)
    rows.append(Row("read probs once (np.sum)", n_pool, None, read, 0.0, 0.0, 0.0))
    rows[-1].figure = f"{probs.nbytes / MB / read / 1024:.1f} GB/s"
    print(_format(rows[-1]), flush=True)
    for name in strategies.SCORERS:
        fn = strategies.SCORERS[name]
        seconds = best_of(partial(fn, probs), repeat=3)
        _, tm, rss, _ = measure(partial(fn, probs))
        row = Row(f"{name} (K=20)", n_pool, None, seconds, max(tm, rss), tm, rss)
        row.figure = f"{seconds / read:.1f} x read"
        if name == "bald" and full:
            row.target = "<= 3.0 x read"
            row.passed = seconds <= 3 * read
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _format(row: Row) -> str:
    verdict = {None: "", True: "PASS", False: "FAIL"}[row.passed]
    k = "" if row.k is None else str(row.k)
    return (
        f"{row.case:<32} {row.n:>9,} {k:>5} {row.seconds:>9.3f} {row.peak_mb:>9.1f} "
        f"{row.tracemalloc_mb:>8.1f} {row.rss_mb:>8.1f}  {row.figure:<16} {row.target:<32} "
        f"{verdict}"
    )


def _header() -> str:
    head = (
        f"{'case':<32} {'pool N':>9} {'k':>5} {'seconds':>9} {'peak MB':>9} "
        f"{'tracemal':>8} {'rss':>8}  {'figure':<16} {'target':<32} result"
    )
    return head + "\n" + "-" * len(head)


def _set_threads(threads: int) -> str:
    torch.set_num_threads(threads)
    strategies.set_torch_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        return f"torch and BLAS: {threads}"
    except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS is untouched
        return f"torch: {threads}, BLAS: default"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strategies", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pool of 10k only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/BLAS threads (default 1, the library's default: on a 2-core machine "
        "shared with other jobs 2 threads stall on each other's barriers; see "
        "docs/strategies.md)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [10_000, 100_000]
    threads = _set_threads(args.threads)
    load_before = os.getloadavg()
    print(f"strategies benchmark: K={K}, C={C}, D={D}, float32; threads {threads}")
    print(f"load average before: {load_before[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print("peak MB = max(tracemalloc peak, sampled RSS peak) above the input\n")
    print(_header())
    _warm_up()
    rows: list[Row] = []
    for n in sizes:
        rows += run_selectors(n, full=n == 100_000)
    rows += run_scorers(sizes[-1], full=not args.quick)
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} (1 min); 5 min: {load_after[1]:.2f}")
    failed = [r.case for r in rows if r.passed is False]
    print("targets: " + ("all met" if not failed else "NOT met: " + ", ".join(failed)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m benchmarks.strategies" + (" --quick" if args.quick else ""),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "memory_method": "max(tracemalloc peak, RSS sampled every 2 ms) above the input",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
