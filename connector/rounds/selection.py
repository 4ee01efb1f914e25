"""Choosing a batch, apart from the round machine: candidate sampling, readability
checks where no model reads the items, and turning a strategy's ``Selection`` into
prioritised picks with prelabels. Pure functions of their inputs (no state db, no I/O
beyond the store passed in).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from connector.contracts.ports import ObjectStore
from connector.storage.window import raise_store_errors
from strategies import PoolOutputs, Selection

#: A chosen item: (item id, acquisition score, predicted class, confidence).
Pick = tuple[str, float | None, str | None, float | None]


def image_problem(data: bytes | Exception) -> str | None:
    """Why ``data`` is not a usable image (None if it is): missing, empty, corrupt."""
    if isinstance(data, Exception):
        return f"cannot be read: {type(data).__name__}: {data}"
    if not data:
        return "zero-byte object"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image"
        return f"not a decodable image: {exc}"
    return None


def sample_candidates(
    keys: Iterable[str], max_candidates: int | None, rng: np.random.Generator
) -> list[str]:
    """A uniform random subset of at most ``max_candidates`` keys, in their input order.

    One pass and ``O(max_candidates)`` memory however long ``keys`` is (reservoir
    sampling, Li's "Algorithm L", ACM TOMS 1994: it draws a random skip length instead of
    a random number per key). ``None`` keeps every key.
    """
    if max_candidates is None:
        return list(keys)
    if max_candidates < 0:
        raise ValueError(f"max_candidates must be >= 0 or None, got {max_candidates}")
    m = int(max_candidates)
    if m == 0:
        return []
    reservoir: list[tuple[int, str]] = []
    it: Iterator[tuple[int, str]] = enumerate(keys)
    for pair in it:
        reservoir.append(pair)
        if len(reservoir) == m:
            break
    else:
        return [k for _, k in reservoir]
    # u in (0, 1]: log(u) is finite.
    w = float(np.exp(np.log(1.0 - rng.random()) / m))
    while True:
        skip = int(np.floor(np.log(1.0 - rng.random()) / np.log1p(-w))) if w < 1.0 else 0
        taken: tuple[int, str] | None = None
        for _ in range(skip + 1):
            taken = next(it, None)
            if taken is None:
                break
        if taken is None:
            break
        reservoir[int(rng.integers(m))] = taken
        w *= float(np.exp(np.log(1.0 - rng.random()) / m))
    reservoir.sort()
    return [k for _, k in reservoir]


def readable_prefix(
    store: ObjectStore, ordered: Sequence[str], n: int, max_workers: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """The first ``n`` items of ``ordered`` whose objects decode as images, and the
    unreadable ones met on the way (``(key, reason)``), reading only as far as needed.

    Used where no model reads the items (cold start), so that a corrupt object is
    quarantined rather than pushed to annotators as a broken task.
    """
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    pos = 0
    while len(good) < n and pos < len(ordered):
        chunk = list(ordered[pos : pos + max(8, 2 * (n - len(good)))])
        pos += len(chunk)
        for key, data in raise_store_errors(store.read_many(chunk, max_workers=max_workers)):
            problem = image_problem(data)
            if problem is None:
                good.append(key)
            else:
                bad.append((key, problem))
    return good[:n], bad


def picks(
    outputs: PoolOutputs,
    pinned_rows: Sequence[int],
    rest_rows: np.ndarray,
    selection: Selection,
    classes: Sequence[str],
) -> list[Pick]:
    """Pinned rows first (no score), then the strategy's choice in priority order, each
    with the model's predicted class and confidence (mean over the K passes) as prelabel.

    ``selection`` indexes ``rest_rows``, which index ``outputs``.
    """
    ids = list(outputs.ids or [])
    rows = [*pinned_rows, *(int(rest_rows[i]) for i in selection.indices.tolist())]
    scores: list[float | None] = [None] * len(pinned_rows)
    scores += [float(s) for s in selection.scores.tolist()]
    probs_M_C = outputs.probs_N_K_C[np.asarray(rows, dtype=np.int64)].mean(axis=1)
    out: list[Pick] = []
    for row, score, p in zip(rows, scores, probs_M_C, strict=True):
        c = int(np.argmax(p))
        out.append((ids[row], score, classes[c], float(p[c])))
    return out
