"""Crash safety of models: training or scoring that dies leaves the previous model in
force, and a partial checkpoint is never loaded (issue 13)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from connector.contracts.errors import CheckpointError
from connector.devtools.datasets import DIGIT_CLASSES, LabeledImage
from connector.learning.checkpoints import load_checkpoint, save_checkpoint
from connector.learning.model import ModelSpec
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig, train_classifier
from connector.state import Phase
from tests.fakes import PixelLearner, build, label_all


@pytest.fixture(scope="module")
def checkpoint(
    digits_dir: tuple[Path, list[LabeledImage]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainedModel]:
    root, items = digits_dir
    paths = [root / i.key for i in items[:40]]
    labels = [DIGIT_CLASSES.index(i.label) for i in items[:40]]
    with torch.random.fork_rng(devices=[]):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        spec, cfg = ModelSpec(image_size=16, width=8), TrainConfig(min_steps=5, seed=0)
        trained = train_classifier(paths, labels, DIGIT_CLASSES, spec, cfg)
        torch.set_num_threads(before)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(trained, path, {"round": 1})
    return path, trained


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_checkpoint_is_never_loaded(
    checkpoint: tuple[Path, TrainedModel], tmp_path: Path, keep: float
) -> None:
    path, _ = checkpoint
    data = path.read_bytes()
    partial = tmp_path / "model.pt"
    partial.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="trains again"):
        load_checkpoint(partial)
    assert load_checkpoint(path).classes == DIGIT_CLASSES  # the whole file still loads


def test_a_training_run_that_dies_leaves_the_previous_checkpoint(
    checkpoint: tuple[Path, TrainedModel], tmp_path: Path
) -> None:
    _, trained = checkpoint
    target = tmp_path / "model.pt"
    save_checkpoint(trained, target, {"round": 1})
    before = target.read_bytes()

    def dies(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("killed while writing")

    real_save = torch.save
    torch.save = dies  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(trained, target, {"round": 2})
    finally:
        torch.save = real_save
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class CheckedPixelLearner(PixelLearner):
    """The fakes' learner, refusing a partial file as ``TorchLearner`` does."""

    def load(self, path: Path) -> Any:
        try:
            return pickle.loads(path.read_bytes())
        except Exception as exc:
            raise CheckpointError(f"{path} is partial ({exc})") from None


def test_a_partial_round_checkpoint_sends_the_round_back_to_train(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    learner = CheckedPixelLearner()
    engine.learner = engine.ctx.learner = learner
    engine.step()
    label_all(labeling, truth)
    engine.should_stop = lambda rnd: rnd.phase is Phase.SCORE
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.SCORE
    model = engine.ctx.round_dir(1) / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # a partial file where the model was
    fits = learner.fits
    engine.should_stop = lambda rnd: False
    rnd = engine.resume(1)
    assert rnd.phase is Phase.WAIT, rnd.error
    assert learner.fits == fits + 1, "trained again instead of scoring with part of a model"
    assert learner.load(model) is not None
    assert labeling.model_version == rnd.model_version


def test_training_or_scoring_that_dies_leaves_the_previous_model_in_force(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects)
    engine.step()
    label_all(labeling, truth)
    first = engine.step()
    assert first is not None and first.round == 1 and first.phase is Phase.WAIT
    in_force = labeling.model_version
    assert in_force == first.model_version
    first_model = (engine.ctx.round_dir(1) / "model.pt").read_bytes()
    label_all(labeling, truth)
    fit, score = learner.fit, learner.score

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the process died here")

    for phase in ("fit", "score"):
        setattr(learner, phase, dies)
        rnd = engine.step()
        assert rnd is not None and rnd.round == 2 and rnd.attempts >= 1
        assert labeling.model_version == in_force, f"{phase} died: round 1's model stays"
        assert (engine.ctx.round_dir(1) / "model.pt").read_bytes() == first_model
        assert not [t for t in labeling.tasks.values() if t.task.round == 2]
        learner.fit, learner.score = fit, score  # type: ignore[method-assign]
        if phase == "fit":
            engine.should_stop = lambda rnd: rnd.phase is Phase.SCORE
            engine.step()
            engine.should_stop = lambda rnd: False
    rnd = engine.step()
    assert rnd is not None and rnd.round == 2 and rnd.phase is Phase.WAIT
    assert labeling.model_version == rnd.model_version != in_force
