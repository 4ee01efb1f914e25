"""Batch-choice helpers: readability checks, prelabels and priority order."""

from __future__ import annotations

import numpy as np

from connector.devtools.datasets import digit_png, digits_arrays
from connector.rounds.selection import image_problem, picks, readable_prefix
from strategies import PoolOutputs, Selection
from tests.fakes import MemoryStore


def test_image_problem_names_what_is_wrong() -> None:
    images, _ = digits_arrays()
    assert image_problem(digit_png(images[0])) is None
    assert image_problem(b"") == "zero-byte object"
    assert "not a decodable image" in (image_problem(b"\x89PNG\r\n\x1a\ntruncated") or "")
    assert "cannot be read" in (image_problem(KeyError("k")) or "")


def test_readable_prefix_skips_and_reports_bad_objects() -> None:
    images, _ = digits_arrays()
    good = {f"g{i}.png": digit_png(images[i]) for i in range(5)}
    store = MemoryStore({**good, "b0.png": b"junk", "b1.png": b""})
    order = ["b0.png", "g0.png", "b1.png", "g1.png", "g2.png", "g3.png", "g4.png"]
    chosen, bad = readable_prefix(store, order, 3, max_workers=2)
    assert chosen == ["g0.png", "g1.png", "g2.png"]
    assert [k for k, _ in bad] == ["b0.png", "b1.png"]


def test_picks_put_pinned_first_and_carry_prelabels() -> None:
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.6, 0.4]], [[0.5, 0.5]]])
    out = PoolOutputs(probs, ids=["a", "b", "c", "d"])
    rest = np.array([1, 2, 3])
    sel = Selection(np.array([2, 0]), np.array([0.9, 0.4]), "x")  # d, then b
    got = picks(out, [0], rest, sel, ["cat", "dog"])
    assert got == [("a", None, "cat", 0.9), ("d", 0.9, "cat", 0.5), ("b", 0.4, "dog", 0.8)]
