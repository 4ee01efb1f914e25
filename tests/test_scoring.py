"""Pool scoring: streamed batches, bad objects skipped and reported, candidate sampling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from connector.devtools.datasets import LabeledImage
from connector.learning.model import ModelSpec
from connector.learning.scoring import sample_candidates, score_pool, score_store
from connector.learning.trained import TrainedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return TrainedModel.untrained(ModelSpec(image_size=16, width=16, dropout=0.5), list("abc"))


def _items(root: Path, items: list[LabeledImage], n: int) -> list[tuple[str, bytes | Exception]]:
    return [(i.key, (root / i.key).read_bytes()) for i in items[:n]]


def test_bad_objects_are_skipped_and_reported(
    model: TrainedModel, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    root, items = digits_dir
    good = _items(root, items, 10)
    png = good[0][1]
    assert isinstance(png, bytes)
    bad: list[tuple[str, bytes | Exception]] = [
        ("empty.png", b""),
        ("truncated.png", png[: len(png) // 2]),
        ("notes.png", b"this is text"),
        ("gone.png", KeyError("gone.png")),
    ]
    mixed = [*good[:3], *bad[:2], *good[3:7], *bad[2:], *good[7:]]
    result = score_pool(model, mixed, batch_size=4)
    assert result.outputs.ids == [k for k, _ in good]
    assert result.outputs.probs_N_K_C.shape == (10, 1, 3)
    reasons = dict(result.failures)
    assert set(reasons) == {"empty.png", "truncated.png", "notes.png", "gone.png"}
    assert "zero-byte" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.png"]
    assert "KeyError" in reasons["gone.png"]


def test_scoring_in_chunks_equals_scoring_at_once(
    model: TrainedModel, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    root, items = digits_dir
    pool = _items(root, items, 37)
    small = score_pool(model, iter(pool), batch_size=5, with_embeddings=True)
    large = score_pool(model, iter(pool), batch_size=256, with_embeddings=True)
    np.testing.assert_allclose(small.outputs.probs_N_K_C, large.outputs.probs_N_K_C, atol=1e-6)
    assert small.outputs.emb_N_D is not None and large.outputs.emb_N_D is not None
    np.testing.assert_allclose(small.outputs.emb_N_D, large.outputs.emb_N_D, atol=1e-5)
    x, _, _ = model.decode([b for _, b in pool])  # type: ignore[misc]
    np.testing.assert_allclose(small.outputs.probs_N_K_C, model.predict_tensor(x), atol=1e-6)


def test_mc_samples_are_seeded_and_vary(
    model: TrainedModel, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    root, items = digits_dir
    pool = _items(root, items, 12)
    a = score_pool(model, pool, mc_samples=6, seed=3, progress=lambda *_: None)
    b = score_pool(model, pool, mc_samples=6, seed=3)
    assert a.outputs.probs_N_K_C.shape == (12, 6, 3)
    np.testing.assert_array_equal(a.outputs.probs_N_K_C, b.outputs.probs_N_K_C)
    assert a.outputs.probs_N_K_C.std(axis=1).max() > 0


def test_mc_scoring_in_shards_equals_scoring_at_once(
    model: TrainedModel, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    # What sharded scoring (connector.scoring, Ray) relies on: an item's dropout masks
    # follow its position in the pool, not the batch, the shard or the items before it.
    root, items = digits_dir
    pool = _items(root, items, 40)
    pool[11] = ("unreadable.png", b"not an image")
    whole = score_pool(model, pool, mc_samples=5, seed=7, batch_size=16, with_embeddings=True)
    parts = [
        score_pool(
            model,
            pool[a:b],
            mc_samples=5,
            seed=7,
            batch_size=3,
            first_position=a,
            with_embeddings=True,
        )
        for a, b in ((0, 9), (9, 13), (13, 40))
    ]
    assert [i for p in parts for i in p.outputs.ids] == whole.outputs.ids
    assert [f for p in parts for f in p.failures] == whole.failures
    sharded = np.concatenate([p.outputs.probs_N_K_C for p in parts])
    np.testing.assert_allclose(sharded, whole.outputs.probs_N_K_C, atol=1e-6)
    assert whole.outputs.probs_N_K_C.std(axis=1).max() > 0
    # A shard that did not say where it starts gets other masks: the position matters.
    late = score_pool(model, pool[13:40], mc_samples=5, seed=7, batch_size=16)
    assert not np.allclose(late.outputs.probs_N_K_C, parts[2].outputs.probs_N_K_C, atol=1e-4)


def test_dropout_draws_depend_on_the_position_only() -> None:
    from connector.learning.masks import BLOCK, DropoutMasks

    positions = [BLOCK - 2, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK + 1]  # across blocks
    together = DropoutMasks(seed=1).uniform(0, positions, 4, 6)
    alone = torch.cat([DropoutMasks(seed=1).uniform(0, [p], 4, 6) for p in positions])
    assert torch.equal(together, alone)
    assert not torch.equal(together, DropoutMasks(seed=2).uniform(0, positions, 4, 6))
    assert not torch.equal(together, DropoutMasks(seed=1).uniform(1, positions, 4, 6))
    with pytest.raises(ValueError, match=">= 0"):
        DropoutMasks(seed=1).uniform(0, [-1], 4, 6)


def test_empty_pool_and_progress(model: TrainedModel) -> None:
    calls: list[tuple[str, int, int]] = []
    result = score_pool(model, [], progress=lambda *a: calls.append(a))
    assert result.n == 0 and result.outputs.probs_N_K_C.shape == (0, 1, 3)
    assert calls == []


def test_an_error_of_the_item_source_is_raised(model: TrainedModel) -> None:
    def broken() -> Iterator[tuple[str, bytes | Exception]]:
        yield ("x.png", b"")
        raise ConnectionError("listing failed")

    with pytest.raises(ConnectionError, match="listing failed"):
        score_pool(model, broken())


def test_score_store_reads_a_local_folder(
    model: TrainedModel, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    from connector.storage.s3 import LocalStore

    root, items = digits_dir
    keys = [i.key for i in items[:20]] + ["missing.png"]
    result = score_store(model, LocalStore(root), keys, max_workers=4, batch_size=8)
    assert result.outputs.ids == keys[:20]
    assert [k for k, _ in result.failures] == ["missing.png"]


@pytest.mark.s3
def test_score_store_reads_s3(model: TrainedModel, s3_store, digits_dir) -> None:  # type: ignore[no-untyped-def]
    root, items = digits_dir
    for i in items[:6]:
        s3_store.put(i.key, (root / i.key).read_bytes())
    s3_store.put("broken.png", b"\x89PNG\r\n\x1a\n garbage")
    keys = [i.key for i in items[:6]] + ["broken.png"]
    result = score_store(model, s3_store, keys, batch_size=4)
    assert result.outputs.ids == keys[:6]
    assert [k for k, _ in result.failures] == ["broken.png"]


def test_sample_candidates_is_uniform_ordered_and_streaming() -> None:
    counts = np.zeros(50)
    for seed in range(2000):
        got = sample_candidates((f"k{i:02d}" for i in range(50)), 5, np.random.default_rng(seed))
        assert len(got) == 5 and got == sorted(got)
        counts[[int(k[1:]) for k in got]] += 1
    # each key is expected 2000 * 5 / 50 = 200 times; binomial sd ~ 13.4
    assert np.abs(counts - 200).max() < 70
    assert sample_candidates(iter(["a", "b"]), 10, np.random.default_rng(0)) == ["a", "b"]
    assert sample_candidates(iter(["a", "b"]), None, np.random.default_rng(0)) == ["a", "b"]
    assert sample_candidates(iter(["a"]), 0, np.random.default_rng(0)) == []
    big = sample_candidates((str(i) for i in range(200_000)), 3, np.random.default_rng(1))
    assert len(big) == 3
