"""MC-dropout masks as a pure function of (seed, ensemble member, item position).

Scoring a pool in shards, on several processes or machines (``connector.scoring``), must
give every item the dropout masks it gets when the whole pool is scored at once. One
generator drawn batch after batch cannot: an item's masks would depend on how many items
were drawn before it in the same process. Here the uniform draws of the item at position
``p`` of the candidate list are row ``p % BLOCK`` of block ``p // BLOCK``, drawn by a
generator seeded from ``(seed, member, block)``; so no split into shards, no batch size
and no unreadable item before it changes them. A shard whose bounds are multiples of
``BLOCK`` draws each of its blocks once, as a single process would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

#: Items per block of draws: the default scoring batch, so a batch costs one ``rand``.
BLOCK = 256


def block_seed(seed: int, member: int, block: int) -> int:
    """The torch seed of one block: ``SeedSequence`` mixing, so neighbouring seeds,
    members and blocks give unrelated streams. Negative seeds are taken modulo 2**64."""
    words = [seed % 2**64, member, block]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)
    return int(state[0])


class DropoutMasks:
    """Uniform draws ``[B, K, D]`` for items by position; ``draws < p`` drops a unit.

    Keeps the last ``cache_blocks`` blocks: batches that share a block (a batch smaller
    than ``BLOCK``, or one cut by an unreadable item) reuse it instead of drawing it again.
    """

    def __init__(self, seed: int, cache_blocks: int = 2) -> None:
        self.seed = seed
        self.cache_blocks = max(1, cache_blocks)
        self._cache: OrderedDict[tuple[int, int, int, int], torch.Tensor] = OrderedDict()

    def _block(self, member: int, block: int, k: int, d: int) -> torch.Tensor:
        key = (member, block, k, d)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        gen = torch.Generator().manual_seed(block_seed(self.seed, member, block))
        draws = torch.rand((BLOCK, k, d), generator=gen)
        self._cache[key] = draws
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return draws

    def uniform(self, member: int, positions: Sequence[int], k: int, d: int) -> torch.Tensor:
        """Draws ``[len(positions), k, d]`` in ``[0, 1)`` for the items at ``positions``
        (their indices in the whole candidate list, >= 0)."""
        if not positions:
            return torch.empty((0, k, d))
        first, last = positions[0], positions[-1]
        if min(positions) < 0:
            raise ValueError(f"item positions must be >= 0, got {min(positions)}")
        if first // BLOCK == last // BLOCK and last - first == len(positions) - 1:
            # One block, contiguous positions: the common case, a view without a copy.
            start = first % BLOCK
            return self._block(member, first // BLOCK, k, d)[start : start + len(positions)]
        pos = torch.as_tensor(positions, dtype=torch.int64)
        blocks = pos // BLOCK
        out = torch.empty((len(positions), k, d))
        for block in torch.unique(blocks).tolist():
            rows = blocks == block
            out[rows] = self._block(member, block, k, d)[pos[rows] - block * BLOCK]
        return out
