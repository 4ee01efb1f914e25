"""The training side of loss prediction, VAAL and WAAL (``connector.learning.coupled``):
the ranking loss, each method trained with a tiny classifier, deterministic by seed, its
per-item outputs, and its checkpoint."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from connector.contracts.errors import CheckpointError, ConfigError
from connector.learning.checkpoints import load_checkpoint, save_checkpoint
from connector.learning.coupled import Coupling
from connector.learning.coupled.loss_prediction import feature_taps, ranking_loss
from connector.learning.model import ModelSpec, build_model
from connector.learning.scoring import score_pool
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig, fit_tensors, train_classifier
from connector.rounds.plan import check_coupled
from strategies import get_strategy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(image_size=16, width=8)
CFG = TrainConfig(min_steps=12, max_steps=12)
METHODS = ["loss_prediction", "vaal", "waal"]
#: VAAL's steps in these tests: enough to move its networks, a tenth of a round's.
VAAL_STEPS = 30


Digits = tuple[list[bytes], list[int], list[bytes]]
Train = Callable[[str, int], TrainedModel]


class ListPool:
    """An ``UnlabeledPool`` over encoded images in memory."""

    def __init__(self, images: Sequence[bytes]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        pick = rng.choice(len(self.images), size=min(n, len(self.images)), replace=False)
        return [self.images[i] for i in pick.tolist()]


@pytest.fixture(scope="module")
def digits(
    digit_objects: tuple[dict[str, bytes], dict[str, str]],
) -> tuple[list[bytes], list[int], list[bytes]]:
    """(40 labeled images, their labels, 60 unlabeled images)."""
    objects, truth = digit_objects
    keys = sorted(objects)
    labeled, pool = keys[:40], keys[40:100]
    return (
        [objects[k] for k in labeled],
        [int(truth[k]) for k in labeled],
        [objects[k] for k in pool],
    )


@pytest.fixture(scope="module")
def trained(digits: Digits) -> Train:
    """``trained(method, seed)``: a model trained with ``method``, once per module (the
    tests only read it)."""
    return functools.cache(lambda trains, seed=0: _train(digits, trains, seed))


def _train(digits: Digits, trains: str, seed: int = 0) -> TrainedModel:
    images, labels, pool = digits
    coupling = Coupling(trains, ListPool(pool), seed=seed, vaal_steps=VAAL_STEPS)
    cfg = TrainConfig(**{**CFG.__dict__, "seed": seed})
    return train_classifier(
        images, labels, [str(i) for i in range(10)], SPEC, cfg, coupling=coupling
    )


def _aux(model: TrainedModel, images: Sequence[bytes]) -> np.ndarray:
    out = score_pool(model, ((f"k{i}", b) for i, b in enumerate(images))).outputs
    assert out.aux is not None and model.coupled is not None
    return out.aux[model.coupled.name]


def test_ranking_loss_rewards_the_true_order_and_ignores_an_odd_item() -> None:
    target = torch.tensor([3.0, 1.0, 0.5, 2.0])  # pairs (0, 3) and (1, 2)
    right = torch.tensor([5.0, 2.0, 0.0, 1.0])  # orders both pairs right, gaps >= 1
    wrong = torch.tensor([0.0, 0.0, 2.0, 3.0])  # orders both pairs wrong
    assert ranking_loss(right, target).shape == ()
    assert ranking_loss(right, target).item() == 0.0
    # pair (0, 3): 1 - (0 - 3) = 4; pair (1, 2): 1 - (0 - 2) = 3
    assert ranking_loss(wrong, target).item() == pytest.approx(3.5)
    odd = ranking_loss(
        torch.cat([right, torch.tensor([100.0])]), torch.cat([target, torch.tensor([-9.0])])
    )
    assert odd.item() == 0.0
    assert ranking_loss(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0


def test_ranking_loss_gradient_pushes_the_predictions_into_order() -> None:
    pred = torch.tensor([0.0, 0.0], requires_grad=True)
    ranking_loss(pred, torch.tensor([2.0, 1.0])).backward()
    assert pred.grad is not None
    assert pred.grad[0] < 0 < pred.grad[1]  # raise item 0's prediction, lower item 1's


def test_loss_prediction_taps_the_small_cnns_blocks() -> None:
    model = build_model(SPEC, 10, 1)
    assert len(feature_taps(model.backbone)) == 4


@pytest.mark.parametrize("trains", METHODS)
def test_each_method_trains_and_scores_finite_per_item_values(
    trains: str, trained: Train, digits: Digits
) -> None:
    model = trained(trains, 0)
    assert model.coupled is not None and model.coupled.name == trains
    info = model.history["coupled"]
    assert info["trains"] == trains and info["steps"] > 0
    aux = _aux(model, digits[2][:25])
    assert aux.shape == (25,) and aux.dtype == np.float32
    assert np.isfinite(aux).all()
    assert np.ptp(aux) > 0  # a trained network tells items apart
    if trains in ("vaal", "waal"):
        assert info["unlabeled"] == 60
        assert ((aux >= 0) & (aux <= 1)).all()  # a probability (VAAL) / a sigmoid (WAAL)


@pytest.mark.parametrize("trains", METHODS)
def test_each_method_is_deterministic_by_seed(trains: str, trained: Train, digits: Digits) -> None:
    a, b, c = trained(trains, 0), _train(digits, trains), trained(trains, 1)
    pool = digits[2][:20]
    np.testing.assert_array_equal(_aux(a, pool), _aux(b, pool))
    assert not np.array_equal(_aux(a, pool), _aux(c, pool))


def test_vaal_discriminator_tells_unlabeled_looking_images_apart() -> None:
    # Labeled: dark images; unlabeled: bright noise. The discriminator must call new
    # bright images more "unlabeled" than new dark ones.
    gen = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 40, (64, 1, 16, 16), generator=gen, dtype=torch.uint8)
    bright = torch.randint(150, 255, (64, 1, 16, 16), generator=gen, dtype=torch.uint8)
    y = torch.arange(64) % 2
    coupling = Coupling("vaal", ListPool([]), seed=0, vaal_steps=100)
    coupling_x = _with_unlabeled(coupling, bright)
    model = fit_tensors(dark, y, ["a", "b"], SPEC, CFG, coupling=coupling_x)
    test_dark = torch.randint(0, 40, (16, 1, 16, 16), generator=gen, dtype=torch.uint8)
    test_bright = torch.randint(150, 255, (16, 1, 16, 16), generator=gen, dtype=torch.uint8)
    aux_dark = model.infer_aux(test_dark)[2]["vaal"]
    aux_bright = model.infer_aux(test_bright)[2]["vaal"]
    assert aux_bright.mean() > aux_dark.mean() + 0.2


def _with_unlabeled(coupling: Coupling, x_u: torch.Tensor) -> Coupling:
    """``coupling`` whose unlabeled sample is the decoded ``x_u``."""

    class Given(Coupling):
        def unlabeled_images(self, channels: int, size: int) -> torch.Tensor:
            return x_u

    return Given(
        coupling.trains, coupling.unlabeled, coupling.decode, coupling.seed, coupling.vaal_steps
    )


@pytest.mark.parametrize("trains", ["vaal", "waal"])
def test_without_unlabeled_images_training_still_gives_finite_scores(
    trains: str, digits: Digits
) -> None:
    images, labels, pool = digits
    coupling = Coupling(trains, ListPool([]), seed=0, vaal_steps=VAAL_STEPS)
    model = train_classifier(
        images, labels, [str(i) for i in range(10)], SPEC, CFG, coupling=coupling
    )
    assert model.history["coupled"]["unlabeled"] == 0
    assert np.isfinite(_aux(model, pool[:5])).all()


@pytest.mark.parametrize("trains", METHODS)
def test_checkpoint_round_trip_keeps_the_coupled_module(
    trains: str, trained: Train, digits: Digits, tmp_path: Path
) -> None:
    model = trained(trains, 0)
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, {"round": 1})
    loaded = load_checkpoint(path)
    assert loaded.coupled is not None and loaded.coupled.name == trains
    pool = digits[2][:20]
    np.testing.assert_array_equal(_aux(loaded, pool), _aux(model, pool))
    # The strategy selects the same items from the reloaded model's outputs.
    outputs = score_pool(loaded, ((f"k{i}", b) for i, b in enumerate(pool))).outputs
    before = score_pool(model, ((f"k{i}", b) for i, b in enumerate(pool))).outputs
    rng = np.random.default_rng(0)
    strategy = get_strategy(trains)
    np.testing.assert_array_equal(
        strategy.select(outputs, 5, rng).indices, strategy.select(before, 5, rng).indices
    )
    # A truncated copy is never loaded.
    partial = tmp_path / "partial.pt"
    data = path.read_bytes()
    partial.write_bytes(data[: len(data) - 200])
    with pytest.raises(CheckpointError, match="not a readable al-connector checkpoint"):
        load_checkpoint(partial)


def test_a_model_without_coupled_module_has_no_aux(
    digits: Digits,
) -> None:
    images, labels, pool = digits
    model = train_classifier(images, labels, [str(i) for i in range(10)], SPEC, CFG)
    assert model.coupled is None
    assert score_pool(model, ((f"k{i}", b) for i, b in enumerate(pool[:5]))).outputs.aux is None


def test_unknown_method_and_ensembles_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="cannot train 'vae'"):
        Coupling("vae")
    with pytest.raises(
        ConfigError, match=r"model\.ensemble_size is 3; set model\.ensemble_size = 1"
    ):
        check_coupled(get_strategy("waal"), 3, setting="strategy.name")
    with pytest.raises(ConfigError, match="loss prediction network"):
        check_coupled(get_strategy("loss_prediction"), 2, setting="strategy.name")
    check_coupled(get_strategy("vaal"), 3, setting="strategy.name")  # task-agnostic: fine


def test_ray_shards_carry_the_coupled_values_as_whole_pool_scoring_does(
    trained: Train, digits: Digits, tmp_path: Path
) -> None:
    from connector.learning.checkpoints import checkpoint_bytes
    from connector.scoring.shards import merge, plan_shards
    from connector.scoring.worker import ShardWorker
    from connector.storage.recipe import StoreRecipe

    model = trained("loss_prediction")
    _, _, pool = digits
    keys = [f"u{i:03d}.png" for i in range(len(pool))]
    for key, data in zip(keys, pool, strict=True):
        (tmp_path / key).write_bytes(data)
    whole = _aux(model, pool)
    worker = ShardWorker(
        StoreRecipe("local", local_root=tmp_path),
        checkpoint_bytes(model),
        batch_size=16,
        read_concurrency=2,
        torch_threads=1,
    )
    shards = plan_shards(keys, 25)
    results = {}
    for shard in shards:
        res = worker.score(shard, mc_samples=1, seed=0, with_embeddings=False)
        assert not isinstance(res, Exception) and hasattr(res, "aux")
        results[shard.index] = res
    merged, _ = merge(shards, results, samples=1, classes=10, feature_dim=None)
    assert merged.aux is not None
    np.testing.assert_allclose(merged.aux["loss_prediction"], whole, atol=1e-5)
