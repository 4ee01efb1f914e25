"""Training: determinism, schedule, class weights, early stopping, evaluation, checkpoints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from connector.contracts.errors import CheckpointError, ConfigError
from connector.devtools.datasets import DIGIT_CLASSES, LabeledImage
from connector.learning.checkpoints import (
    checkpoint_bytes,
    load_checkpoint,
    load_checkpoint_bytes,
    save_checkpoint,
)
from connector.learning.model import ModelSpec
from connector.learning.training import (
    TrainConfig,
    TrainedModel,
    class_weights,
    evaluate,
    plan_schedule,
    refit_steps,
    stratified_holdout,
    train_classifier,
)

FAST_SPEC = ModelSpec(image_size=16, width=16)
FAST_CFG = TrainConfig(min_steps=40, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(digits_dir: tuple[Path, list[LabeledImage]]) -> tuple[list[Path], list[int]]:
    root, items = digits_dir
    return [root / i.key for i in items], [DIGIT_CLASSES.index(i.label) for i in items]


@pytest.fixture(scope="module")
def trained(digits: tuple[list[Path], list[int]]) -> TrainedModel:
    paths, labels = digits
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        return train_classifier(paths[:100], labels[:100], DIGIT_CLASSES, FAST_SPEC, FAST_CFG)


def test_training_learns_and_generalises(
    trained: TrainedModel, digits: tuple[list[Path], list[int]]
) -> None:
    paths, labels = digits
    metrics = evaluate(trained, paths[200:], labels[200:])
    assert metrics["n"] == 100
    assert metrics["accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert set(metrics) >= {"accuracy", "macro_f1", "per_class_accuracy", "confusion", "n"}
    assert len(metrics["confusion"]) == 10 and sum(map(sum, metrics["confusion"])) == 100
    assert trained.classes == DIGIT_CLASSES
    assert trained.data_channels == 1


def test_training_is_deterministic_and_leaves_global_rng_alone(
    trained: TrainedModel, digits: tuple[list[Path], list[int]]
) -> None:
    paths, labels = digits
    state = torch.random.get_rng_state()
    again = train_classifier(paths[:100], labels[:100], DIGIT_CLASSES, FAST_SPEC, FAST_CFG)
    assert torch.equal(torch.random.get_rng_state(), state)
    a = trained.predict(paths[200:230], mc_samples=3)
    b = again.predict(paths[200:230], mc_samples=3)
    assert a.shape == (30, 3, 10)
    np.testing.assert_array_equal(a, b)


def test_predict_and_embed_accept_bytes(
    trained: TrainedModel, digits: tuple[list[Path], list[int]]
) -> None:
    paths, _ = digits
    blobs = [p.read_bytes() for p in paths[:5]]
    np.testing.assert_allclose(trained.predict(blobs), trained.predict(paths[:5]))
    emb = trained.embed(blobs)
    assert emb.shape == (5, trained.feature_dim) and emb.dtype == np.float32


def test_checkpoint_round_trip_is_safe_and_atomic(trained: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "round-0001" / "model.pt"
    save_checkpoint(trained, path, {"round": 1, "model_version": "r0001"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt", "model.pt.json"]
    # Loads with the safe unpickler: only tensors and plain containers inside.
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"meta", "tensors"}
    meta = json.loads(payload["meta"])
    assert meta["classes"] == list(DIGIT_CLASSES)
    assert meta["extra"] == {"round": 1, "model_version": "r0001"}
    assert meta["spec"]["image_size"] == 16
    assert json.loads((path.parent / "model.pt.json").read_text())["extra"]["round"] == 1
    loaded = load_checkpoint(path)
    x = torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8)
    np.testing.assert_array_equal(loaded.predict_tensor(x), trained.predict_tensor(x))
    assert loaded.spec == trained.spec and loaded.classes == trained.classes


def test_checkpoint_bytes_round_trip_and_truncation(trained: TrainedModel) -> None:
    # How a model travels to the Ray workers: the checkpoint format, loaded safely.
    data = checkpoint_bytes(trained)
    assert set(torch.load(io.BytesIO(data), weights_only=True)) == {"meta", "tensors"}
    loaded = load_checkpoint_bytes(data)
    x = torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8)
    np.testing.assert_array_equal(loaded.predict_tensor(x), trained.predict_tensor(x))
    assert loaded.spec == trained.spec and loaded.classes == trained.classes
    with pytest.raises(CheckpointError, match="the model sent to this worker"):
        load_checkpoint_bytes(data[: len(data) // 2])


def test_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"meta": json.dumps({"format": "x"}), "tensors": {}}, path)
    with pytest.raises(ConfigError, match="format"):
        load_checkpoint(path)


def test_corrupt_labeled_image_is_left_out(digits: tuple[list[Path], list[int]]) -> None:
    paths, labels = digits
    images: list[Path | bytes] = [*paths[:20], b"not an image"]
    out = train_classifier(
        images, [*labels[:20], 0], DIGIT_CLASSES, FAST_SPEC, TrainConfig(min_steps=2)
    )
    assert out.history["skipped"] == [20]
    assert out.history["n_train"] == 20


def test_holdout_chooses_the_steps_and_every_label_is_trained_on(
    digits: tuple[list[Path], list[int]],
) -> None:
    """The held-out labels only choose the step count; the model kept is trained on all
    of them (the old trainer kept the early-stopped model of the other 80%: issue 15)."""
    paths, labels = digits
    cfg = TrainConfig(min_steps=10, max_steps=40, holdout_fraction=0.2, min_holdout=10, patience=2)
    out = train_classifier(paths[:100], labels[:100], DIGIT_CLASSES, FAST_SPEC, cfg)
    member = out.history["members"][0]
    trial = member["holdout_trial"]
    assert 15 <= out.history["n_holdout"] <= 25  # 20% of each class, rounded per class
    assert out.history["n_train"] == 100
    assert 0.0 <= trial["holdout_accuracy"] <= 1.0
    assert trial["best_step"] <= trial["steps_run"] <= 40
    n_trial = 100 - out.history["n_holdout"]
    assert member["steps_run"] == refit_steps(trial, n_trial, 100, cfg)
    assert "holdout_accuracy" not in member  # the kept model was not early-stopped


def test_refit_steps_stay_between_the_floor_and_the_plan() -> None:
    cfg = TrainConfig(min_steps=150, max_steps=600)
    _, planned = plan_schedule(1000, cfg)
    assert planned == 313  # 20 epochs of 1,000 labels by 64
    short = {"best_step": 5, "batch_size": 64}
    long = {"best_step": 10_000, "batch_size": 64}
    assert refit_steps(short, 900, 1000, cfg) == cfg.min_steps
    assert refit_steps(long, 900, 1000, cfg) == planned
    # 10 epochs of the 900-item trial are 10 epochs of the 1,000 labels
    assert refit_steps({"best_step": 141, "batch_size": 64}, 900, 1000, cfg) == 157


def test_no_holdout_when_the_plan_is_at_its_floor(digits: tuple[list[Path], list[int]]) -> None:
    paths, labels = digits
    cfg = TrainConfig(min_steps=30, max_steps=30, holdout_fraction=0.2, min_holdout=10)
    out = train_classifier(paths[:100], labels[:100], DIGIT_CLASSES, FAST_SPEC, cfg)
    assert out.history["n_holdout"] == 0 and out.history["n_train"] == 100
    assert out.history["members"][0]["steps_run"] == 30


def test_schedule_adapts_to_the_labeled_set() -> None:
    cfg = TrainConfig()
    bs_small, steps_small = plan_schedule(20, cfg)
    bs_large, steps_large = plan_schedule(5000, cfg)
    assert (bs_small, steps_small) == (16, cfg.min_steps)
    assert bs_large == 128 and steps_large == cfg.max_steps
    assert plan_schedule(100, TrainConfig(epochs=3, batch_size=25)) == (25, 12)


def test_class_weights_balance_frequencies() -> None:
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    counts = torch.tensor([3.0, 1.0, 0.0])
    assert w[2] == 0
    assert torch.allclose(w[0] * counts[0], w[1] * counts[1])


def test_holdout_keeps_two_training_items_per_class() -> None:
    y = np.array([0] * 50 + [1] * 3 + [2] * 2)
    tr, ho = stratified_holdout(y, 0.3, 5, np.random.default_rng(0))
    assert len(np.intersect1d(tr, ho)) == 0 and len(tr) + len(ho) == len(y)
    assert (y[tr] == 1).sum() >= 2 and (y[tr] == 2).sum() == 2
    _, none = stratified_holdout(y, 0.05, 5, np.random.default_rng(0))
    assert len(none) == 0
