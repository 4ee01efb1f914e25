"""Semi-supervised training on the unlabeled pool (connector.learning.semi, FixMatch)."""

from __future__ import annotations

import builtins
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from connector.cli.simulate import simulate_cmd
from connector.contracts.errors import ConfigError
from connector.devtools.datasets import write_digits
from connector.learning.model import ModelSpec
from connector.learning.semi import (
    SemiConfig,
    check_unlabeled,
    fixmatch_loss,
    strong_augment,
)
from connector.learning.torch_learner import TorchLearner
from connector.learning.training import TrainConfig
from connector.rounds.unlabeled import StorePool
from connector.settings import Settings
from connector.simulation import SimulationConfig, load_dataset, run_simulation
from connector.simulation.modes import merge_modes
from connector.simulation.recommend import recommend
from connector.storage.local import LocalStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(image_size=16, width=8)
FAST = TrainConfig(min_steps=8, max_steps=12)
SEMI = SemiConfig(mode="fixmatch", max_unlabeled=40, min_steps=16)


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_augment_keeps_shape_is_seeded_and_leaves_the_input(channels: int) -> None:
    x = torch.randn(6, channels, 16, 16)
    before = x.clone()
    a = strong_augment(x, torch.Generator().manual_seed(3))
    b = strong_augment(x, torch.Generator().manual_seed(3))
    c = strong_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)  # the caller's batch is not written into
    # the cutout square (at least 2x2 pixels where it overlaps a corner) is set to 0
    assert all(int((a[i] == 0).sum()) >= channels * 4 for i in range(6))


def test_no_pseudo_label_below_the_threshold() -> None:
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.3, 0.2, 0.1], [0.0, 0.0, 5.0]])
    strong = torch.randn(3, 3, requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong, threshold=0.9)
    conf = weak.softmax(1).max(1).values
    assert mask.tolist() == [1.0, 0.0, 1.0] and bool(conf[1] < 0.9)
    expected = F.cross_entropy(strong[[0, 2]], torch.tensor([0, 2]), reduction="sum") / 3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert strong.grad is not None and torch.all(strong.grad[1] == 0)
    none, mask0 = fixmatch_loss(weak, strong, threshold=1.0)
    assert float(mask0.sum()) == 0.0 and float(none.detach()) == 0.0


def test_the_weak_view_gets_no_gradient() -> None:
    weak = (torch.randn(4, 3) * 10).requires_grad_()
    strong = torch.randn(4, 3, requires_grad=True)
    loss, _ = fixmatch_loss(weak, strong, threshold=0.1)
    loss.backward()
    assert strong.grad is not None
    assert weak.grad is None


def test_bad_semi_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="semi_supervised must be one of none, fixmatch"):
        SemiConfig(mode="mixmatch")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="semi_threshold"):
        SemiConfig(mode="fixmatch", threshold=0.0)
    with pytest.raises(ConfigError, match="semi_ratio"):
        SemiConfig(mode="fixmatch", ratio=0)


# --------------------------------------------------------------------------- the learner


class CountingPool:
    """An ``UnlabeledPool`` over encoded images that counts what it hands out."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = images
        self.calls: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        pick = rng.choice(len(self.images), size=min(n, len(self.images)), replace=False)
        self.calls.append(len(pick))
        return [self.images[i] for i in pick]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int], list[bytes]]:
    root = tmp_path_factory.mktemp("digits-semi")
    items = write_digits(root, limit=90, size=16, seed=2)
    paths = [root / it.key for it in items]
    labels = [int(it.label) for it in items]
    # 20 labeled images covering several classes; the other 70 are the unlabeled pool
    return paths[:20], labels[:20], [p.read_bytes() for p in paths[20:]]


def _fit(learner: TorchLearner, digits: Any, seed: int, pool: Any) -> Any:
    paths, labels, _ = digits
    return learner.fit(paths, labels, [str(i) for i in range(10)], seed=seed, unlabeled=pool)


def test_fixmatch_reads_the_pool_once_per_run_and_reports_pseudo_labels(digits: Any) -> None:
    pool = CountingPool(digits[2])
    learner = TorchLearner(SPEC, FAST, semi=SEMI)
    model = _fit(learner, digits, 0, pool)
    assert pool.calls == [SEMI.max_unlabeled]
    stats = model.history["semi"]
    assert stats["mode"] == "fixmatch" and stats["unlabeled_images"] == SEMI.max_unlabeled
    # the step floor of semi-supervised runs applies (FAST alone caps runs at 12 steps)
    assert stats["steps"] == model.history["members"][0]["steps_run"] == SEMI.min_steps
    assert 0.0 <= stats["pseudo_label_rate"] <= 1.0
    supervised = TorchLearner(SPEC, FAST)
    plain = _fit(supervised, digits, 0, CountingPool(digits[2]))
    assert "semi" not in plain.history


def test_fixmatch_is_deterministic_for_a_seed(digits: Any) -> None:
    learner = TorchLearner(SPEC, FAST, semi=SEMI)
    a = _fit(learner, digits, 5, CountingPool(digits[2])).members[0].state_dict()
    b = _fit(learner, digits, 5, CountingPool(digits[2])).members[0].state_dict()
    c = _fit(learner, digits, 6, CountingPool(digits[2])).members[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unlabeled_images_are_streamed_from_the_store_never_written(
    digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    for i, data in enumerate(digits[2]):
        (bucket / f"u-{i:03d}.png").write_bytes(data)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    store = LocalStore(bucket)
    reads: list[str] = []
    read_many = store.read_many

    def counting(keys: list[str], workers: int) -> Any:
        reads.extend(keys)
        return read_many(keys, workers)

    monkeypatch.setattr(store, "read_many", counting)
    real_open = builtins.open

    def read_only_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        assert not set(mode) & set("wax+"), f"training wrote {file!r} (mode {mode!r})"
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.chdir(tmp_path)
    pool = StorePool(store, sorted(p.name for p in bucket.iterdir()))
    _fit(TorchLearner(SPEC, FAST, semi=SEMI), digits, 0, pool)
    monkeypatch.undo()
    assert len(reads) == SEMI.max_unlabeled and len(set(reads)) == len(reads)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_semi_supervised_with_no_unlabeled_items_names_the_fix(digits: Any) -> None:
    learner = TorchLearner(SPEC, FAST, semi=SEMI)
    with pytest.raises(ConfigError, match="add images to the bucket, or set"):
        _fit(learner, digits, 0, CountingPool([]))
    with pytest.raises(ConfigError, match="semi_supervised = 'none'"):
        _fit(learner, digits, 0, None)
    check_unlabeled(SemiConfig(), None)  # supervised: no pool needed


def test_settings_select_fixmatch_and_reject_unknown_modes() -> None:
    s = Settings(model={"semi_supervised": "fixmatch", "semi_threshold": 0.9, "semi_ratio": 2})
    learner = TorchLearner.from_settings(s)
    assert learner.semi == SemiConfig(mode="fixmatch", threshold=0.9, ratio=2)
    assert TorchLearner.from_settings(Settings()).semi.enabled is False
    with pytest.raises(ValueError, match="semi_supervised"):
        Settings(model={"semi_supervised": "mixmatch"})


# --------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits-semi-if")
    write_digits(root, limit=120, layout="imagefolder", seed=1)
    return root


TINY = SimulationConfig(
    strategies=("random", "margin"),
    seeds=(0,),
    initial=20,
    batch=10,
    budget=30,
    spec=SPEC,
    train=FAST,
    full_data=False,
)


def test_simulate_with_fixmatch_and_training_modes_as_candidates(folder: Path) -> None:
    ds = load_dataset(folder)
    plain = run_simulation(ds, TINY)
    semi = run_simulation(ds, replace(TINY, semi=SEMI))
    assert semi["config"]["semi"]["mode"] == "fixmatch"
    # same validation split and labels schedule; the models differ by the pool's term
    assert [r["validation"] for r in semi["runs"]] == [r["validation"] for r in plain["runs"]]
    assert [r["labels"] for r in semi["runs"]] == [[20, 30], [20, 30]]
    assert semi["runs"][0]["accuracy"] != plain["runs"][0]["accuracy"]
    merged = merge_modes({"none": plain, "fixmatch": semi})
    names = [r["strategy"] for r in merged["summary"]]
    assert names == ["random", "margin", "random+fixmatch", "margin+fixmatch"]
    assert {r["training_mode"] for r in merged["runs"]} == {"supervised", "fixmatch"}
    rec = recommend(merged)
    assert rec["candidate"] in names
    assert ("semi_supervised" in rec["settings"]) == (rec["training_mode"] == "fixmatch")


def test_cli_semi_supervised_option(folder: Path, tmp_path: Path) -> None:
    bad = CliRunner().invoke(simulate_cmd, [str(folder), "--semi-supervised", "mixmatch"])
    assert bad.exit_code == 2 and "none, fixmatch" in bad.output
