"""Run every benchmark (or the ones named) and print their tables.

    python -m benchmarks                 # all, full size
    python -m benchmarks --quick         # all, small sizes
    python -m benchmarks strategies      # one

Each benchmark writes its figures to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = (
    "strategies",
    "batchbald",
    "scoring",
    "ray_scoring",
    "round",
    "simulation",
    "labelstudio",
    "label_efficiency",
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"\n=== benchmark: {name} ===", flush=True)
        t0 = time.perf_counter()
        module.main(["--quick"] if args.quick else [])
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===", flush=True)


if __name__ == "__main__":
    main()
