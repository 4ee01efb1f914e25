"""Pool scoring: stream images through a trained model into ``strategies.PoolOutputs``.

The pool may be far larger than memory. Items arrive as an iterable of
``(key, bytes | Exception)`` (what ``ObjectStore.read_many`` yields), are decoded and
batched by a background thread, and the model runs on one batch while the next ones are
read and decoded (a bounded queue of ``prefetch`` batches). So object-storage latency
and decoding hide behind compute, and memory holds a few batches plus the results:
``probs_N_K_C`` float32 and, when asked, ``emb_N_D`` float32.

Items that cannot be used (a read error, zero bytes, truncated or corrupt data, not an
image) are skipped and reported in ``ScoreResult.failures`` with their keys; they never
stop the round.

MC-dropout masks are a function of the seed and of each item's position in the pool
(``masks.DropoutMasks``), not of the batches: a pool scored in shards, each told where it
starts (``first_position``), gets the masks it gets when scored at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from connector.contracts.ports import ObjectStore
from connector.learning.images import BadImage, Decoder, decode_image
from connector.learning.masks import DropoutMasks
from connector.learning.trained import TrainedModel
from connector.learning.training import ProgressFn
from connector.rounds.selection import sample_candidates
from strategies import PoolOutputs

log = logging.getLogger(__name__)

__all__ = ["ScoreResult", "sample_candidates", "score_pool", "score_store"]


@dataclass(frozen=True)
class ScoreResult:
    """Scored pool items (``outputs.ids`` in input order) and the items left out.

    ``timings`` (seconds): ``compute`` in the model, ``wait`` for reads and decoding
    that compute did not hide, ``total`` wall time.
    """

    outputs: PoolOutputs
    failures: list[tuple[str, str]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.outputs.n


@dataclass
class _Batch:
    keys: list[str]
    #: each item's position in the input (unreadable items count), for its dropout masks
    positions: list[int]
    x: torch.Tensor


_DONE = object()


class _Producer(threading.Thread):
    """Decodes ``items`` into batches on a queue; failures are collected, not raised."""

    def __init__(
        self,
        items: Iterable[tuple[str, bytes | Exception]],
        channels: int,
        size: int,
        batch_size: int,
        prefetch: int,
        decode: Decoder,
        first_position: int = 0,
    ) -> None:
        super().__init__(name="pool-decoder", daemon=True)
        self.items = items
        self.first_position = first_position
        self.decode = decode
        self.channels, self.size, self.batch_size = channels, size, batch_size
        self.queue: queue.Queue[object] = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.failures: list[tuple[str, str]] = []
        self.error: BaseException | None = None

    def _put(self, obj: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        keys: list[str] = []
        positions: list[int] = []
        tensors: list[torch.Tensor] = []
        try:
            for pos, (key, data) in enumerate(self.items, start=self.first_position):
                if self.stop.is_set():
                    return
                if isinstance(data, BaseException):
                    self.failures.append((key, f"read failed: {type(data).__name__}: {data}"))
                    continue
                try:
                    tensors.append(self.decode(data, self.channels, self.size))
                except BadImage as exc:
                    self.failures.append((key, str(exc)))
                    continue
                keys.append(key)
                positions.append(pos)
                if len(keys) == self.batch_size:
                    if not self._put(_Batch(keys, positions, torch.stack(tensors))):
                        return
                    keys, positions, tensors = [], [], []
            if keys and not self._put(_Batch(keys, positions, torch.stack(tensors))):
                return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self.error = exc
        finally:
            self._put(_DONE)


def score_pool(
    trained: TrainedModel,
    items: Iterable[tuple[str, bytes | Exception]],
    *,
    mc_samples: int = 1,
    batch_size: int = 256,
    with_embeddings: bool = False,
    progress: ProgressFn | None = None,
    total: int | None = None,
    seed: int = 0,
    prefetch: int = 3,
    decode: Decoder = decode_image,
    first_position: int = 0,
) -> ScoreResult:
    """Score pool items into ``PoolOutputs`` (``probs_N_K_C``, ``emb_N_D``, ``ids``, and
    the ``aux`` array of the model's coupled module when it has one).

    Args:
        items: ``(key, encoded bytes or the exception reading it)``, e.g.
            ``store.read_many(keys)``; consumed once, in order.
        mc_samples: MC-dropout samples per ensemble member (K = mc_samples x members).
        with_embeddings: also return the first member's penultimate features.
        progress: called as ``progress("scoring", done, total)``; ``total`` is the
            number of items when known (0 otherwise).
        seed: seed of the dropout masks (scores are reproducible).
        prefetch: decoded batches kept ready ahead of the model.
        decode: the image decoder (``images.decode_image``, or a ``DecodeMemo``).
        first_position: the position of the first item in the whole pool, when
            ``items`` is a shard of it: an item's dropout masks follow its position.

    The result rows follow the input order with failed items left out.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t_start = time.perf_counter()
    masks = DropoutMasks(seed, cache_blocks=2 * len(trained.members))
    producer = _Producer(
        items,
        trained.data_channels,
        trained.spec.image_size,
        batch_size,
        prefetch,
        decode,
        first_position,
    )
    producer.start()
    ids: list[str] = []
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    auxes: list[dict[str, np.ndarray]] = []
    compute = wait = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            obj = producer.queue.get()
            t1 = time.perf_counter()
            wait += t1 - t0
            if obj is _DONE:
                break
            assert isinstance(obj, _Batch)
            p, e, a = trained.infer_aux(
                obj.x, mc_samples, None, with_embeddings, masks=masks, positions=obj.positions
            )
            compute += time.perf_counter() - t1
            probs.append(p)
            auxes.append(a)
            if e is not None:
                embs.append(e)
            ids.extend(obj.keys)
            if progress is not None:
                progress("scoring", len(ids) + len(producer.failures), total or 0)
    finally:
        producer.stop.set()
        producer.join()
    if producer.error is not None:
        raise producer.error
    k, c = trained.samples_per_item(mc_samples), trained.num_classes
    probs_N_K_C = np.concatenate(probs) if probs else np.empty((0, k, c), dtype=np.float32)
    emb_N_D: np.ndarray | None = None
    if with_embeddings:
        emb_N_D = np.concatenate(embs) if embs else np.empty((0, trained.feature_dim), np.float32)
    for key, reason in producer.failures:
        log.warning("pool item %s skipped: %s", key, reason)
    timings = {
        "compute": round(compute, 4),
        "wait": round(wait, 4),
        "total": round(time.perf_counter() - t_start, 4),
    }
    aux: dict[str, np.ndarray] | None = None
    if trained.coupled is not None:
        name = trained.coupled.name
        aux = {name: np.concatenate([a[name] for a in auxes]) if auxes else np.empty(0, np.float32)}
    outputs = PoolOutputs(probs_N_K_C=probs_N_K_C, emb_N_D=emb_N_D, ids=ids, aux=aux)
    return ScoreResult(outputs, list(producer.failures), timings)


def score_store(
    trained: TrainedModel,
    store: ObjectStore,
    keys: Iterable[str],
    *,
    max_workers: int = 16,
    mc_samples: int = 1,
    batch_size: int = 256,
    with_embeddings: bool = False,
    progress: ProgressFn | None = None,
    total: int | None = None,
    seed: int = 0,
    prefetch: int = 3,
    decode: Decoder = decode_image,
) -> ScoreResult:
    """Score objects of a store: ``max_workers`` concurrent reads feed the decoder.

    ``read_many`` keeps up to ``max_workers`` reads in flight while the model computes
    (the decoder thread pulls from it ahead of the model), which hides object-storage
    latency. Other arguments are those of ``score_pool``.
    """
    return score_pool(
        trained,
        store.read_many(keys, max_workers=max_workers),
        mc_samples=mc_samples,
        batch_size=batch_size,
        with_embeddings=with_embeddings,
        progress=progress,
        total=total,
        seed=seed,
        prefetch=prefetch,
    )
