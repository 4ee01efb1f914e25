"""Pool scoring on a Ray cluster: shards of the candidates to actors that hold the model.

With ``ray_dispatch``, the only modules that import ``ray``; imported only when
``scoring.engine = "ray"`` (``connector.scoring.import_ray_engine``). A round is scored by
``RayScorer.score_keys``:

1. The model goes into Ray's object store once, in the checkpoint format
   (``checkpoint_bytes``: the workers load it safely, never unpickle a model object).
   ``scoring.workers`` actors (``worker.ShardWorker``) start, each reserving
   ``cpus_per_worker`` CPUs, opening the store from its ``StoreRecipe`` and loading the
   model. They live for the round, so the cluster's CPUs are free between rounds.
2. The candidates are cut into shards of ``shard_size``; a ready actor holds up to
   ``INFLIGHT_PER_WORKER`` of them (one scoring, the next queued behind it), so it never
   waits for the daemon. Workers read their images from the bucket themselves: the
   daemon holds keys and outputs, never image bytes.
3. A shard whose actor died (killed, out of memory, its node gone) goes back to the
   front of the queue and the actor is replaced; a shard lost ``max_shard_attempts``
   times, no worker able to start, or the cluster gone fails the attempt with a
   ``ScoringError``, and the round core's failure policy takes over (SCORE again after a
   backoff, then FAILED with an alert). Each shard's result is taken once, so a retried
   shard is never in the outputs twice.
4. The results are merged in candidate order (``shards.merge``).

Steps 1 to 3 are ``ray_dispatch``. Scheduling, placement, process supervision and
transport are Ray's; the shard bookkeeping that makes a lost worker cost a retry rather
than the round is ours.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray import exceptions as rex

from connector.contracts.errors import ConfigError, ConnectorError, ServiceUnavailable
from connector.contracts.learner import Progress, Scored
from connector.learning.trained import TrainedModel
from connector.scoring.ray_dispatch import Dispatch, short_error
from connector.scoring.shards import ScoringError, ShardResult, merge, plan_shards
from connector.settings.scoring import ScoringSettings
from connector.storage.recipe import StoreRecipe

log = logging.getLogger(__name__)

NAMESPACE = "al-connector"
#: Ray binds a cluster to this machine's network address, and turns "127.0.0.1" into it;
#: another loopback address keeps a "local" cluster on this machine (Linux routes all
#: of 127.0.0.0/8 to the loopback interface; elsewhere Ray stays on loopback itself).
LOOPBACK_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None


def _target(address: str) -> tuple[str, int] | None:
    """``(host, port)`` to probe, or None for "local" and "auto"."""
    if address in ("local", "auto"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"scoring.ray_address {address!r} is not local, auto, ray://HOST:PORT or "
            "HOST:PORT; fix it (a KubeRay head: ray://<cluster>-head-svc:10001)"
        )
    return host.strip("[]"), int(port)


class RayScorer:
    """``PoolScorer`` on a Ray cluster (``scoring.engine = "ray"``).

    Args:
        cfg: the ``[scoring]`` settings.
        recipe: how the workers open the pool's store.
        batch_size: images per inference batch on a worker.
        read_concurrency: reads in flight on each worker.
    """

    def __init__(
        self, cfg: ScoringSettings, recipe: StoreRecipe, *, batch_size: int, read_concurrency: int
    ) -> None:
        self.cfg = cfg
        self.recipe = recipe
        self.batch_size = batch_size
        self.read_concurrency = read_concurrency
        self._joined = False  # True when this object called ray.init (and so shuts it down)

    def __repr__(self) -> str:
        return f"RayScorer({self.describe()})"

    def describe(self) -> str:
        c = self.cfg
        return (
            f"ray at {c.ray_address}: {c.workers} workers x {c.cpus_per_worker:g} CPU, shards "
            f"of {c.shard_size}, reading {self.recipe.describe()}"
        )

    # ------------------------------------------------------------------ the cluster
    def connect(self) -> None:
        """Join the cluster (or start a local one); ``ServiceUnavailable`` naming the fix
        when it cannot be reached. A process already connected to Ray stays as it is."""
        if ray.is_initialized():
            return
        address = self.cfg.ray_address
        target = _target(address)
        if target is not None:
            try:
                with socket.create_connection(target, timeout=self.cfg.connect_timeout_s):
                    pass
            except OSError as exc:
                why = exc.strerror or short_error(exc)
                raise ServiceUnavailable(
                    f"cannot reach the Ray cluster at {address} ({why}); start it (`ray "
                    "start --head`, or the KubeRay RayCluster of deploy/kubernetes/kuberay/) "
                    "or fix scoring.ray_address"
                ) from None
        kwargs: dict[str, Any] = {"address": address, "namespace": NAMESPACE}
        if address == "local":
            kwargs.update(include_dashboard=False)
            if LOOPBACK_NODE_IP:
                kwargs["_node_ip_address"] = LOOPBACK_NODE_IP
        try:
            ray.init(**kwargs)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise ServiceUnavailable(
                f"cannot join the Ray cluster at {address} ({short_error(exc)}); check that it "
                f"runs Ray {ray.__version__} (pip install 'al-connector[ray]' pins it) and "
                "scoring.ray_address"
            ) from None
        self._joined = True
        log.info("joined the Ray cluster at %s (Ray %s)", address, ray.__version__)

    def close(self) -> None:
        if self._joined and ray.is_initialized():
            ray.shutdown()
        self._joined = False

    def check(self) -> str:
        """What ``al-connector check`` reports: the cluster's nodes and CPUs, or why not."""
        c = self.cfg
        if c.ray_address == "local":
            return (
                f"ray {ray.__version__}: a local cluster (loopback) starts with the daemon; "
                f"{c.workers} workers x {c.cpus_per_worker:g} CPU on {os.cpu_count()} CPUs"
            )
        was_connected = ray.is_initialized()
        self.connect()
        try:
            resources = ray.cluster_resources()
        finally:
            if not was_connected:
                self.close()
        nodes = sum(1 for k in resources if k.startswith("node:") and "internal" not in k)
        cpus, need = resources.get("CPU", 0.0), c.workers * c.cpus_per_worker
        room = (
            ""
            if need <= cpus
            else f"; the workers reserve {need:g} CPUs: those that do not fit wait for room "
            "(an autoscaler adds nodes), or lower scoring.workers"
        )
        return (
            f"ray {ray.__version__} cluster at {c.ray_address}: {nodes} "
            f"node{'' if nodes == 1 else 's'}, {cpus:g} CPUs; "
            f"{c.workers} workers x {c.cpus_per_worker:g} CPU{room}"
        )

    # ------------------------------------------------------------------ scoring
    def score_keys(
        self,
        model: Any,
        keys: Sequence[str],
        *,
        with_embeddings: bool,
        mc_samples: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Scored:
        if not isinstance(model, TrainedModel):
            raise TypeError(f"the Ray engine scores a TrainedModel, got {type(model).__name__}")
        t0 = time.perf_counter()
        shards = plan_shards(list(keys), self.cfg.shard_size)
        info: dict[str, Any] = {"engine": "ray", "workers": self.cfg.workers}
        results: dict[int, ShardResult] = {}
        if shards:
            try:
                self.connect()
            except ServiceUnavailable as exc:
                # Mid-round, an unreachable cluster is a failed SCORE attempt: retried,
                # then FAILED with an alert (not an outage waited out for ever).
                raise ScoringError(str(exc)) from None
            dispatch = Dispatch(self, shards, model, (mc_samples, seed, with_embeddings))
            try:
                results = dispatch.run(progress, len(keys))
            except ConnectorError:
                raise
            except (OSError, TimeoutError, rex.RayError) as exc:
                # What is left after the workers' errors (handled by the dispatch): the
                # connection to the cluster. A bug of ours keeps its own traceback.
                self.close()
                raise ScoringError(
                    f"lost the Ray cluster at {self.cfg.ray_address} while scoring "
                    f"({short_error(exc)}); SCORE is tried again (rounds.max_phase_attempts): "
                    "check the cluster, or scoring.ray_address"
                ) from None
            info.update(dispatch.stats())
        outputs, failures = merge(
            shards,
            results,
            samples=model.samples_per_item(mc_samples),
            classes=model.num_classes,
            feature_dim=model.feature_dim if with_embeddings else None,
        )
        seconds = time.perf_counter() - t0
        info.update(shards=len(shards), seconds=round(seconds, 2))
        log.info(
            "scored %d candidates on Ray (%d shards, %d workers) in %.1f s: %.0f items/s, "
            "%d shard(s) retried",
            len(keys),
            len(shards),
            self.cfg.workers,
            seconds,
            len(keys) / seconds if seconds else 0.0,
            info.get("retried_shards", 0),
        )
        return Scored(outputs, failures, info)
