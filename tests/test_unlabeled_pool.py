"""The unlabeled pool that semi- and self-supervised training read (connector.rounds.unlabeled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from connector.rounds.unlabeled import StorePool
from connector.storage.local import LocalStore
from tests.fakes import build, label_all


def _store(tmp_path: Path, n: int) -> LocalStore:
    for i in range(n):
        (tmp_path / f"img-{i:03d}.png").write_bytes(f"image {i}".encode())
    return LocalStore(tmp_path)


def test_sample_reads_distinct_items_from_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path, 20)
    pool = StorePool(store, [f"img-{i:03d}.png" for i in range(20)])
    got = pool.sample(8, np.random.default_rng(0))
    assert len(got) == 8 and len(set(got)) == 8
    assert all(g.startswith(b"image ") for g in got)
    assert len(pool.sample(100, np.random.default_rng(1))) == 20


def test_keys_are_listed_only_when_a_learner_asks(tmp_path: Path) -> None:
    calls = []

    def keys() -> list[str]:
        calls.append(1)
        return ["img-000.png"]

    pool = StorePool(_store(tmp_path, 1), keys)
    assert calls == []
    assert pool.sample(1, np.random.default_rng(0)) == [b"image 0"]
    assert len(pool) == 1 and calls == [1]


def test_an_object_deleted_after_listing_is_left_out(tmp_path: Path) -> None:
    store = _store(tmp_path, 3)
    (tmp_path / "img-001.png").unlink()
    pool = StorePool(store, [f"img-{i:03d}.png" for i in range(3)])
    assert sorted(pool.sample(3, np.random.default_rng(0))) == [b"image 0", b"image 2"]


def test_training_reads_the_unlabeled_candidates_only(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects)
    engine.step()  # round 0: the validation split and the first batch are queued
    label_all(labeling, truth)
    engine.step()  # round 1 trains on them
    labeled = {i for i, *_ in engine.state.labeled_items("train")}
    validation = {i for i, *_ in engine.state.labeled_items("validation")}
    assert learner.fits == 1 and labeled and validation
    expected = sorted(data for key, data in objects.items() if key not in labeled | validation)
    assert learner.unlabeled_seen is not None and sorted(learner.unlabeled_seen) == expected
