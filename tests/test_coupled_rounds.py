"""Loss prediction, VAAL and WAAL through the real round engine: TRAIN trains what the
strategy needs, SCORE reads its per-item values, SELECT freezes the strategy's picks;
the plan refuses them, at start-up, for a learner or settings that cannot train them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from connector.app import build_app
from connector.contracts.errors import ConfigError
from connector.contracts.learner import Progress, Scored, UnlabeledPool
from connector.learning.checkpoints import load_checkpoint
from connector.learning.model import ModelSpec
from connector.learning.torch_learner import TorchLearner
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig
from connector.rounds.context import OVERRIDE_STRATEGY, Ports
from connector.rounds.engine import RoundEngine
from connector.simulation import SimulationConfig, load_dataset, run_simulation
from connector.state import Phase, StateDB
from connector.storage.cache import LabeledCache
from strategies import get_strategy
from tests.fakes import DIGIT_CLASSES, FakeLabeling, MemoryStore, build, label_all, make_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(image_size=16, width=8)
TRAIN = TrainConfig(min_steps=10, max_steps=10)


class SpyLearner(TorchLearner):
    """The torch learner, recording what TRAIN asked for and what SCORE produced."""

    def __init__(self) -> None:
        super().__init__(SPEC, TRAIN, vaal_steps=30)
        self.trains_seen: list[str | None] = []
        self.unlabeled_sizes: list[int] = []
        self.scored: list[Scored] = []

    def fit(
        self,
        images: Sequence[Any],
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        seed: int,
        progress: Progress | None = None,
        unlabeled: UnlabeledPool | None = None,
        trains: str | None = None,
    ) -> TrainedModel:
        self.trains_seen.append(trains)
        self.unlabeled_sizes.append(len(unlabeled) if unlabeled is not None else -1)
        return super().fit(
            images, labels, classes, seed=seed, progress=progress, unlabeled=unlabeled,
            trains=trains,
        )  # fmt: skip

    def score(
        self, model: TrainedModel, items: Iterable[tuple[str, bytes | Exception]], **kw: Any
    ) -> Scored:
        out = super().score(model, items, **kw)
        self.scored.append(out)
        return out


@pytest.mark.parametrize("name", ["loss_prediction", "vaal", "waal"])
def test_two_rounds_train_score_and_select_with_the_coupled_network(
    name: str, tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    settings = make_settings(tmp_path, strategy={"name": name, "batch_size": 10})
    learner = SpyLearner()
    labeling = FakeLabeling(DIGIT_CLASSES)
    ports = Ports(
        StateDB(settings.db_path()),
        MemoryStore(objects),
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    engine = RoundEngine(settings, ports, learner, DIGIT_CLASSES)
    engine.step()  # round 0: validation split and a random first batch
    strategy = get_strategy(name)
    for number in (1, 2):
        label_all(labeling, truth)
        rnd = engine.step()
        assert rnd is not None and rnd.round == number and rnd.phase is Phase.WAIT, rnd
        # TRAIN asked for the strategy's network, with the candidates as unlabeled pool.
        assert learner.trains_seen[-1] == name
        assert learner.unlabeled_sizes[-1] == 240 - 30 - 10 * number
        # The checkpoint carries the network (SCORE after a restart has it).
        model = load_checkpoint(tmp_path / "state" / "rounds" / f"{number:04d}" / "model.pt")
        assert model.coupled is not None and model.coupled.name == name
        # SELECT froze the strategy's top items by the scored aux values.
        pool = next(s.outputs for s in learner.scored if s.outputs.n > 100)
        learner.scored.clear()
        assert pool.aux is not None and set(pool.aux) == {name}
        score_of = dict(zip(pool.ids or [], strategy.score(pool).tolist(), strict=True))  # type: ignore[attr-defined]
        chosen = [s for s in engine.state.selection(number) if s.split == "train"]
        assert len(chosen) == 10
        for item in chosen:
            assert item.score == pytest.approx(score_of[item.item_id])
        best = sorted(score_of.values(), reverse=True)[:10]
        assert [s.score for s in chosen] == pytest.approx(best)


def test_a_learner_that_cannot_train_it_is_refused_at_start_up(
    tmp_path: Path, digit_objects: Any
) -> None:
    from tests.fakes import PixelLearner

    settings = make_settings(tmp_path, strategy={"name": "vaal"})
    with pytest.raises(ConfigError, match=r"'vaal' needs the model trained.*PixelLearner"):
        build_app(settings, learner=PixelLearner())
    assert not settings.db_path().exists()  # nothing written
    # The engine, too, refuses it before a round starts (an engine built without the app).
    objects, _ = digit_objects
    engine, _, _ = build(tmp_path, objects, strategy={"name": "waal"})
    with pytest.raises(ConfigError, match="cannot train that; use the torch learner"):
        engine.step()
    assert engine.state.current_round() is None


def test_an_ensemble_is_refused_for_loss_prediction_and_waal(tmp_path: Path) -> None:
    from connector.rounds.plan import resolve_plan

    settings = make_settings(tmp_path, strategy={"name": "waal"}, model={"ensemble_size": 2})
    with pytest.raises(ConfigError, match=r"set model\.ensemble_size = 1"):
        resolve_plan(settings)
    with pytest.raises(ConfigError, match=r"set model\.ensemble_size = 1"):
        SimulationConfig(strategies=("loss_prediction",), spec=replace(SPEC, ensemble_size=3))


def test_simulate_runs_the_coupled_strategies(tmp_path: Path) -> None:
    from connector.devtools.datasets import write_digits

    write_digits(tmp_path, limit=120, layout="imagefolder", seed=2)
    cfg = SimulationConfig(
        strategies=("margin", "loss_prediction", "waal"),
        seeds=(0,),
        initial=20,
        batch=10,
        budget=30,
        spec=SPEC,
        train=TRAIN,
        full_data=False,
    )
    res = run_simulation(load_dataset(tmp_path), cfg)
    runs = {r["strategy"]: r for r in res["runs"]}
    for name in cfg.strategies:
        assert runs[name]["labels"] == [20, 30] and len(runs[name]["selected"]) == 10
    # Each coupled strategy got its own first model, trained with its network: the fit
    # simulate shares between the strategies of a seed is keyed by what was trained (with
    # margin's model, which has no aux array, their selection would have failed).
    assert all(len(runs[n]["accuracy"]) == 2 for n in ("loss_prediction", "waal"))


def test_a_switch_to_a_coupled_strategy_after_training_trains_again(
    tmp_path: Path, digit_objects: Any
) -> None:
    """An override to VAAL lands while the round trains for margin: SCORE finds no VAAL
    values in the model's outputs and sends the round back to TRAIN, which trains VAAL."""
    objects, truth = digit_objects
    settings = make_settings(tmp_path, strategy={"name": "margin", "batch_size": 10})
    learner = SpyLearner()
    labeling = FakeLabeling(DIGIT_CLASSES)
    ports = Ports(
        StateDB(settings.db_path()),
        MemoryStore(objects),
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    engine = RoundEngine(settings, ports, learner, DIGIT_CLASSES)
    engine.step()
    label_all(labeling, truth)
    fit = learner.fit

    def fit_then_switch(*args: Any, **kwargs: Any) -> TrainedModel:
        if not learner.trains_seen:
            engine.state.set_meta(OVERRIDE_STRATEGY, json.dumps({"name": "vaal"}))
        return fit(*args, **kwargs)

    learner.fit = fit_then_switch  # type: ignore[method-assign]
    rnd = engine.step()
    while rnd is not None and rnd.phase not in (Phase.WAIT, Phase.FAILED):
        rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.WAIT, rnd
    assert learner.trains_seen == [None, "vaal"]
    assert rnd.strategy == "vaal"
