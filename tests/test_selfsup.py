"""Self-supervised pre-training on the pool (connector.learning.selfsup, SimCLR): the loss,
the views, an encoder that learns, its file, and the learner that keeps and uses it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from connector.contracts.errors import CheckpointError, ConfigError
from connector.devtools.datasets import digits_arrays
from connector.learning.images import decode_many
from connector.learning.model import ModelSpec, build_model
from connector.learning.pretext import check_pretext
from connector.learning.selfsup import (
    PretrainConfig,
    load_encoder,
    nt_xent,
    pretrain_encoder,
    save_encoder,
    simclr_views,
)
from connector.learning.torch_learner import TorchLearner
from connector.learning.training import TrainConfig
from connector.settings import Settings
from tests.fixtures.data import digit_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(image_size=16, width=8)
SSL = PretrainConfig(pretext="simclr_gray", steps=120, batch_size=128, max_unlabeled=600)


# --------------------------------------------------------------------------- the loss


def test_nt_xent_is_the_cross_entropy_of_each_view_picking_its_pair() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / 0.5).tolist()
    expected = 0.0
    for i in range(8):
        pair = (i + 4) % 8
        denom = sum(math.exp(sim[i][j]) for j in range(8) if j != i)
        expected += -math.log(math.exp(sim[i][pair]) / denom)
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(expected / 8, rel=1e-5)
    # Views that agree with their pair and differ from the rest cost less than random ones.
    basis = torch.eye(4) * 5
    assert float(nt_xent(basis, basis, 0.5)) < float(nt_xent(z1, z2, 0.5))


@pytest.mark.parametrize("colour", [False, True])
def test_views_are_seeded_in_range_and_differ_from_each_other(colour: bool) -> None:
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = simclr_views(x, torch.Generator().manual_seed(3), colour=colour, hflip=True)
    b = simclr_views(x, torch.Generator().manual_seed(3), colour=colour, hflip=True)
    c = simclr_views(x, torch.Generator().manual_seed(4), colour=colour, hflip=True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_gray_views_keep_a_gray_image_gray_and_colour_views_do_not() -> None:
    gray = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(2)).expand(
        -1, 3, -1, -1
    )
    plain = simclr_views(
        gray.contiguous(), torch.Generator().manual_seed(0), colour=False, hflip=False
    )
    assert torch.allclose(plain[:, 0], plain[:, 1]) and torch.allclose(plain[:, 1], plain[:, 2])
    tinted = simclr_views(
        gray.contiguous(), torch.Generator().manual_seed(0), colour=True, hflip=False
    )
    spread = (tinted.amax(dim=1) - tinted.amin(dim=1)).mean(dim=(1, 2))
    assert int((spread > 0.01).sum()) >= 16  # most images got a colour cast


# --------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def pool() -> tuple[torch.Tensor, np.ndarray]:
    """600 digits decoded at 16 px (1 channel) and their labels."""
    images, labels = digits_arrays()
    raw = [digit_png(images[i], size=16) for i in range(600)]
    x, ok, _ = decode_many(raw, 1, 16)
    assert len(ok) == 600
    return x, np.asarray(labels[:600])


def _probe_accuracy(x: torch.Tensor, y: np.ndarray, state: Any, mean: Any, std: Any) -> float:
    """Nearest-centroid accuracy of the backbone's features: centroids from the first
    200 images' labels, scored on the other 400."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(SPEC, 10, 1).eval()
    if state is not None:
        model.backbone.load_state_dict(state)
    with torch.no_grad():
        f = model.features((x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    f = F.normalize(f, dim=1).numpy()
    centroids = np.stack([f[:200][y[:200] == c].mean(axis=0) for c in range(10)])
    return float(((f[200:] @ centroids.T).argmax(axis=1) == y[200:]).mean())


@pytest.fixture(scope="module")
def encoder(pool: tuple[torch.Tensor, np.ndarray]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        return pretrain_encoder(pool[0], SPEC, SSL, seed=0)


def test_pre_training_learns_features_that_separate_the_classes(
    pool: tuple[torch.Tensor, np.ndarray], encoder: Any
) -> None:
    x, y = pool
    info = encoder.info
    assert info["pretext"] == "simclr_gray" and info["steps"] == 120 and info["images"] == 600
    assert info["loss_last"] < info["loss_first"] - 0.5
    untrained = _probe_accuracy(x, y, None, torch.tensor([0.5]), torch.tensor([0.25]))
    learned = _probe_accuracy(x, y, encoder.state, encoder.mean, encoder.std)
    assert learned > untrained + 0.1, (untrained, learned)  # 0.515 -> 0.683 here


def test_pre_training_is_deterministic_for_a_seed(
    pool: tuple[torch.Tensor, np.ndarray], encoder: Any
) -> None:
    cfg = PretrainConfig(pretext="simclr_gray", steps=3, batch_size=32)
    a = pretrain_encoder(pool[0][:64], SPEC, cfg, seed=5)
    b = pretrain_encoder(pool[0][:64], SPEC, cfg, seed=5)
    c = pretrain_encoder(pool[0][:64], SPEC, cfg, seed=6)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)
    # A refresh continues the encoder it is given.
    d = pretrain_encoder(pool[0][:64], SPEC, cfg, seed=5, init=encoder)
    assert d.info["continued"] is True


def test_the_encoder_file_round_trips_and_a_partial_one_is_refused(
    encoder: Any, tmp_path: Path
) -> None:
    path = tmp_path / "encoder.pt"
    save_encoder(encoder, path)
    back = load_encoder(path)
    assert back.info == encoder.info and back.data_channels == 1 and back.fits(SPEC)
    assert all(torch.equal(back.state[k], encoder.state[k]) for k in encoder.state)
    assert not back.fits(ModelSpec(image_size=16, width=16))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="it is pre-trained again at the next training"):
        load_encoder(path)


# --------------------------------------------------------------------------- bad input


def test_a_colour_pretext_on_one_channel_images_is_refused_with_the_fix(
    pool: tuple[torch.Tensor, np.ndarray], tmp_path: Path
) -> None:
    # At start-up, when the settings say the images have one channel:
    with pytest.raises(ValueError, match=r"set model\.pretrain = 'simclr_gray'"):
        Settings(model={"pretrain": "simclr", "channels": 1})
    with pytest.raises(ValueError, match="pretrain"):
        Settings(model={"pretrain": "byol"})
    Settings(model={"pretrain": "simclr", "channels": 3})  # colour images: fine
    # Once the pool is read, when the channels were left to the images:
    with pytest.raises(ConfigError, match="have 1 channel"):
        pretrain_encoder(pool[0][:8], SPEC, PretrainConfig(pretext="simclr", steps=1), seed=0)
    check_pretext("simclr_gray", 1)


def test_cli_start_up_names_the_fix(tmp_path: Path) -> None:
    from connector.cli.main import main

    config = tmp_path / "settings.toml"
    config.write_text(
        f'[storage]\nkind = "local"\nlocal_root = "{tmp_path}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[model]\npretrain = "simclr"\nchannels = 1\n'
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code != 0
    assert "simclr_gray" in result.output and not (tmp_path / "state").exists()


# --------------------------------------------------------------------------- the learner


class ListPool:
    def __init__(self, images: list[bytes]) -> None:
        self.images = images
        self.keys = [f"k{i}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        pick = rng.choice(len(self.images), size=min(n, len(self.images)), replace=False)
        return [self.images[i] for i in pick.tolist()]


def test_the_learner_pre_trains_when_due_and_starts_every_model_from_the_encoder(
    tmp_path: Path,
) -> None:
    images, labels = digits_arrays()
    raw = [digit_png(images[i], size=16) for i in range(200)]
    cfg = PretrainConfig(pretext="simclr_gray", steps=5, batch_size=32, every_rounds=3)
    learner = TorchLearner(
        SPEC, TrainConfig(min_steps=4, max_steps=4), pretraining=cfg,
        encoder_path=tmp_path / "encoder" / "encoder.pt",
    )  # fmt: skip
    classes = [str(i) for i in range(10)]
    assert learner.pretrain_due(0) and learner.encoder() is None
    with pytest.raises(ConfigError, match=r"add images, or set model\.pretrain = 'none'"):
        learner.pretrain(ListPool([]), round=0, seed=0)
    info = learner.pretrain(ListPool(raw[40:]), round=0, seed=0)
    assert info["round"] == 0 and info["images"] == 160 and not info["continued"]
    assert [learner.pretrain_due(r) for r in (1, 2, 3, 4)] == [False, False, True, True]
    encoder = learner.encoder()
    assert encoder is not None
    # The cold start's model embeds with the encoder's backbone and normalisation.
    cold = learner.init_model(classes, seed=0)
    assert cold.history["encoder"]["round"] == 0 and cold.data_channels == 1
    for k, v in cold.members[0].backbone.state_dict().items():
        assert torch.equal(v, encoder.state[k])
    # Training starts from it (and records which encoder), here and after a refresh.
    model = learner.fit(raw[:40], [int(v) for v in labels[:40]], classes, seed=0)
    assert model.history["encoder"]["round"] == 0
    assert learner.pretrain(ListPool(raw[40:]), round=3, seed=3)["continued"] is True
    model = learner.fit(raw[:40], [int(v) for v in labels[:40]], classes, seed=0)
    assert model.history["encoder"]["round"] == 3
    # A partial encoder file is not used: pre-training is due again, and overwrites it.
    assert learner.encoder_path is not None
    learner.encoder_path.write_bytes(learner.encoder_path.read_bytes()[:500])
    assert learner.encoder() is None and learner.pretrain_due(4)
    assert learner.pretrain(ListPool(raw[40:]), round=4, seed=4)["continued"] is False
    # Pre-training off: nothing due, no encoder used even if a file is there.
    off = TorchLearner(SPEC, TrainConfig(), encoder_path=learner.encoder_path)
    assert not off.pretrain_due(0) and off.encoder() is None


def test_settings_turn_pre_training_on() -> None:
    s = Settings(model={"pretrain": "simclr_gray", "pretrain_every_rounds": 0}, state={"dir": "/x"})
    learner = TorchLearner.from_settings(s)
    assert learner.pretraining.pretext == "simclr_gray" and learner.pretraining.every_rounds == 0
    assert learner.encoder_path == Path("/x/encoder/encoder.pt")
    assert not TorchLearner.from_settings(Settings()).pretraining.enabled


def test_a_pool_mode_with_no_image_in_the_bucket_is_refused_at_start_up(tmp_path: Path) -> None:
    from connector.app import build_app, check_unlabeled_pool, open_store

    pool = tmp_path / "pool"
    pool.mkdir()
    for model in ({"pretrain": "simclr_gray"}, {"semi_supervised": "fixmatch"}):
        settings = Settings(
            storage={"kind": "local", "local_root": str(pool)},
            state={"dir": str(tmp_path / "state")},
            model=model,
        )
        key = next(iter(model))
        with pytest.raises(
            ConfigError,
            match=rf"add images to the bucket first, or start with model\.{key} = 'none'",
        ):
            build_app(settings)
        assert not (tmp_path / "state").exists()  # refused before anything is written
    (pool / "a.png").write_bytes(digit_png(digits_arrays()[0][0], size=16))
    assert "images in the bucket" in check_unlabeled_pool(settings, open_store(settings))
    supervised = Settings(storage={"kind": "local", "local_root": str(pool)})
    assert "labels only" in check_unlabeled_pool(supervised, open_store(supervised))


def test_a_torchvision_backbone_pre_trains_on_gray_images_and_fine_tunes_from_it(
    pool: tuple[torch.Tensor, np.ndarray],
) -> None:
    """torchvision archs see 3 channels: a 1-channel view broadcasts over the
    normalisation training uses (the pool's statistics, replicated), kept for the fit."""
    from connector.learning.training import fit_tensors

    spec = ModelSpec(arch="resnet18", image_size=16)
    x, y = pool
    cfg = PretrainConfig(pretext="simclr_gray", steps=2, batch_size=16)
    encoder = pretrain_encoder(x[:64], spec, cfg, seed=0)
    assert encoder.mean.shape == (3,) and encoder.data_channels == 1
    model = fit_tensors(
        x[:30], torch.as_tensor(y[:30]), [str(i) for i in range(10)], spec,
        TrainConfig(min_steps=2, max_steps=2), encoder=encoder,
    )  # fmt: skip
    assert torch.equal(model.mean, encoder.mean) and model.history["encoder"]["steps"] == 2
