"""What one Ray worker does: open the store, load the round's model once, score shards.

Plain Python, no Ray (``ray_engine`` runs it as an actor), so it is tested in-process
too. A worker reads its shard's images from the bucket with the same bounded
concurrent reads as the daemon (``read_many``), decodes and scores them with
``learning.scoring.score_pool`` from the shard's start position, and returns only the
outputs: the image bytes are dropped once decoded and nothing is written to disk, so
the labeled-only cache rule holds on the workers. An unreadable object is a failure in
the result, not a failed shard; an error of the whole store comes back as a
``StoreFailure`` for the daemon to raise.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import torch

from connector.learning.checkpoints import load_checkpoint_bytes
from connector.learning.scoring import score_pool
from connector.learning.trained import TrainedModel
from connector.scoring.shards import Shard, ShardResult, StoreFailure
from connector.storage.recipe import StoreRecipe
from connector.storage.window import STORE_ERRORS, raise_store_errors

log = logging.getLogger(__name__)


class ShardWorker:
    """One worker's state for a round: its store client and the round's model.

    Args:
        recipe: how to open the pool's store here.
        model: the round's model in the checkpoint format (``checkpoint_bytes``).
        batch_size: images per inference batch (``strategy.score_batch_size``).
        read_concurrency: reads in flight (``storage.read_concurrency``).
        torch_threads: torch's intra-op threads (the CPUs the worker reserved).
    """

    def __init__(
        self,
        recipe: StoreRecipe,
        model: bytes,
        *,
        batch_size: int,
        read_concurrency: int,
        torch_threads: int,
    ) -> None:
        torch.set_num_threads(max(1, torch_threads))
        self.store = recipe.open()
        self.model: TrainedModel = load_checkpoint_bytes(model)
        self.batch_size = batch_size
        self.read_concurrency = read_concurrency
        self.name = f"{os.getpid()}@{socket.gethostname()}"

    def pid(self) -> int:
        """The worker's process id (the tests kill it)."""
        return os.getpid()

    def score(
        self, shard: Shard, *, mc_samples: int, seed: int, with_embeddings: bool
    ) -> ShardResult | StoreFailure:
        """The model's outputs on the shard's readable items, in shard order."""
        t0 = time.perf_counter()
        items = self.store.read_many(shard.keys, max_workers=self.read_concurrency)
        try:
            result = score_pool(
                self.model,
                raise_store_errors(items),
                mc_samples=mc_samples,
                batch_size=self.batch_size,
                with_embeddings=with_embeddings,
                seed=seed,
                first_position=shard.start,
            )
        except STORE_ERRORS as exc:
            return StoreFailure(shard.index, type(exc).__name__, str(exc))
        out = result.outputs
        return ShardResult(
            index=shard.index,
            ids=list(out.ids or []),
            probs_N_K_C=out.probs_N_K_C,
            emb_N_D=out.emb_N_D,
            aux=dict(out.aux or {}),
            failures=list(result.failures),
            seconds=time.perf_counter() - t0,
            worker=self.name,
            timings=dict(result.timings),
        )
