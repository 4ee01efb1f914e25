"""Self-supervised pre-training through the real round engine: a TypiClust cold start on
the encoder's embeddings (the validation split kept out of it), models trained from the
encoder, refreshed every N rounds; and in ``simulate``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from connector.contracts.learner import Progress, UnlabeledPool
from connector.learning.checkpoints import load_checkpoint
from connector.learning.model import ModelSpec
from connector.learning.selfsup import PretrainConfig
from connector.learning.torch_learner import TorchLearner
from connector.learning.training import TrainConfig
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.simulation import SimulationConfig, load_dataset, run_simulation
from connector.simulation.recommend import recommend
from connector.state import Phase, StateDB
from connector.storage.cache import LabeledCache
from tests.fakes import DIGIT_CLASSES, FakeLabeling, MemoryStore, label_all, make_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(image_size=16, width=8)


class SpyLearner(TorchLearner):
    """The torch learner from settings, recording each pre-training's round and pool."""

    pools: list[tuple[int, list[str]]]

    def pretrain(
        self, pool: UnlabeledPool, *, round: int, seed: int, progress: Progress | None = None
    ) -> dict[str, Any]:
        self.pools.append((round, list(getattr(pool, "keys", []))))
        return super().pretrain(pool, round=round, seed=seed, progress=progress)


def _engine(tmp_path: Path, objects: dict[str, bytes], cold_start: str) -> tuple[Any, ...]:
    settings = make_settings(
        tmp_path,
        strategy={"name": "margin", "batch_size": 10, "cold_start": cold_start},
        model={
            "image_size": 16,
            "pretrain": "simclr_gray",
            "pretrain_steps": 4,
            "pretrain_every_rounds": 2,
        },
    )
    base = TorchLearner.from_settings(settings)
    learner = SpyLearner(
        replace(base.spec, width=8),
        TrainConfig(min_steps=6, max_steps=6),
        pretraining=replace(base.pretraining, batch_size=32),
        encoder_path=base.encoder_path,
    )
    learner.pools = []
    labeling = FakeLabeling(DIGIT_CLASSES)
    ports = Ports(
        StateDB(settings.db_path()),
        MemoryStore(objects),
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    return RoundEngine(settings, ports, learner, DIGIT_CLASSES), learner, labeling, settings


def test_typiclust_cold_start_on_the_encoder_then_models_from_it_refreshed(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, learner, labeling, settings = _engine(tmp_path, objects, "typiclust")
    engine.step()  # round 0: validation split, then pre-training, then TypiClust's batch
    assert [r for r, _ in learner.pools] == [0]
    selection = engine.state.selection(0)
    validation = {s.item_id for s in selection if s.split == "validation"}
    chosen = [s for s in selection if s.split == "train"]
    assert len(validation) == 30 and len(chosen) == 10
    # The validation images never reached the pre-training: drawn at SCORE, kept out.
    keys = learner.pools[0][1]
    assert len(keys) == 240 - 30 and not validation & set(keys)
    round0 = next(r for r in engine.state.rounds() if r.round == 0)
    assert round0.metrics["selection"]["strategy"] == "typiclust"
    assert round0.metrics["selection"]["pretrain"]["round"] == 0
    assert settings.encoder_path().exists()

    expected_pretrain = {1: False, 2: True, 3: False}
    for number in (1, 2, 3):
        label_all(labeling, truth)
        rnd = engine.step()
        assert rnd is not None and rnd.round == number and rnd.phase is Phase.WAIT, rnd
        metrics = next(r for r in engine.state.rounds() if r.round == number).metrics
        assert ("pretrain" in metrics) is expected_pretrain[number], metrics
        model = load_checkpoint(settings.rounds_dir() / f"{number:04d}" / "model.pt")
        # Every model started from the encoder of its round (refreshed at round 2).
        assert model.history["encoder"]["round"] == (0 if number < 2 else 2)
    refresh = learner.pools[1]
    assert refresh[0] == 2 and not validation & set(refresh[1])
    # Candidates only: the batches of rounds 0 and 1 (labeled) are left out.
    assert len(refresh[1]) == 240 - 30 - 10 * 2


def test_a_random_cold_start_pre_trains_at_the_first_training(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, learner, labeling, settings = _engine(tmp_path, objects, "random")
    engine.step()
    assert learner.pools == [] and not settings.encoder_path().exists()
    label_all(labeling, truth)
    engine.step()
    assert [r for r, _ in learner.pools] == [1]
    round1 = next(r for r in engine.state.rounds() if r.round == 1)
    assert round1.metrics["pretrain"]["continued"] is False


def test_simulate_pre_trains_once_per_seed_and_recommends_it(tmp_path: Path) -> None:
    from connector.devtools.datasets import write_digits

    write_digits(tmp_path, limit=120, layout="imagefolder", seed=2)
    cfg = SimulationConfig(
        strategies=("random", "margin"),
        seeds=(0,),
        initial=20,
        cold_start="typiclust",
        batch=10,
        budget=30,
        spec=SPEC,
        train=TrainConfig(min_steps=6, max_steps=6),
        full_data=False,
        pretraining=PretrainConfig(pretext="simclr_gray", steps=4, batch_size=32),
    )
    res = run_simulation(load_dataset(tmp_path), cfg)
    runs = {r["strategy"]: r for r in res["runs"]}
    assert res["config"]["pretraining"]["pretext"] == "simclr_gray"
    # The paired design: both strategies start from the same encoder, so the same
    # TypiClust cold start and the same first model.
    assert runs["random"]["accuracy"][0] == runs["margin"]["accuracy"][0]
    assert runs["random"]["labels"] == runs["margin"]["labels"] == [20, 30]
    assert 'pretrain = "simclr_gray"' in recommend(res)["settings"]
