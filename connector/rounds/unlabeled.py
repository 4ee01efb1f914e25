"""The unlabeled pool a learner may train on, read from the object store on demand.

Semi- and self-supervised training need unlabeled images, but the local cache holds
labeled items only (a pool may be millions of objects): ``StorePool`` keeps a bounded
random sample of candidate keys and reads the images it is asked for straight from the
store, every time. The validation split and queued items are not candidates, so they
never enter it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from connector.contracts.ports import ObjectStore
from connector.storage.window import raise_store_errors

log = logging.getLogger(__name__)

#: Keys kept per round: more than any CPU training run reads, and a bounded memory.
MAX_KEYS = 50_000


class StorePool:
    """``UnlabeledPool`` over ``keys`` of ``store`` (see the module docstring).

    ``keys`` may be a function, called on first use: a supervised learner never asks,
    and then the candidates are never listed.
    """

    def __init__(
        self,
        store: ObjectStore,
        keys: Sequence[str] | Callable[[], Sequence[str]],
        *,
        read_concurrency: int = 8,
    ) -> None:
        self._store = store
        self._source = keys
        self._keys: list[str] | None = None
        self._workers = read_concurrency

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            src = self._source
            self._keys = list(src() if callable(src) else src)
        return self._keys

    def __len__(self) -> int:
        return len(self.keys)

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        n = max(0, min(int(n), len(self.keys)))
        if n == 0:
            return []
        pick = rng.choice(len(self.keys), size=n, replace=False)
        keys = [self.keys[i] for i in pick.tolist()]
        out: list[bytes] = []
        skipped = 0
        for _key, data in raise_store_errors(self._store.read_many(keys, self._workers)):
            if isinstance(data, bytes):
                out.append(data)
            else:
                skipped += 1
        if skipped:
            log.info("unlabeled pool: %d of %d sampled items could not be read", skipped, n)
        return out
