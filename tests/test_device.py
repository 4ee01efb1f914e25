"""Where training runs (connector.learning.device): a GPU when torch sees one, the CPU
otherwise and for the training-coupled networks; 'cuda' without a GPU is a start-up
error that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from connector.contracts.errors import ConfigError
from connector.devtools.datasets import digits_arrays
from connector.learning.device import check_device, training_device
from connector.learning.model import ModelSpec
from connector.learning.torch_learner import TorchLearner
from connector.learning.training import TrainConfig
from connector.settings import Settings
from tests.fixtures.data import digit_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_auto_takes_a_gpu_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("auto") == torch.device("cuda")
    assert training_device("cuda") == torch.device("cuda")
    assert training_device("cpu") == torch.device("cpu")
    # The coupled strategies' networks keep CPU tensors: their runs stay on the CPU.
    assert training_device("auto", coupled=True) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_refused_at_start_up_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"set model\.device = 'auto' \(a GPU when present\)"):
        check_device("cuda")
    with pytest.raises(ValueError, match="torch sees no GPU"):
        Settings(model={"device": "cuda"})
    with pytest.raises(ValueError, match="device"):
        Settings(model={"device": "gpu"})
    with pytest.raises(ConfigError, match="must be one of auto, cpu, cuda"):
        TrainConfig(device="tpu")
    from connector.cli.main import main

    config = tmp_path / "settings.toml"
    config.write_text(
        f'[storage]\nkind = "local"\nlocal_root = "{tmp_path}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[model]\ndevice = "cuda"\n'
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code != 0 and "model.device = 'auto'" in result.output


def test_the_setting_reaches_training_and_the_run_records_its_device() -> None:
    settings = Settings(model={"device": "cpu", "pretrain": "simclr_gray"})
    learner = TorchLearner.from_settings(settings)
    assert learner.train_config.device == "cpu" and learner.pretraining.device == "cpu"
    images, labels = digits_arrays()
    raw = [digit_png(images[i], size=16) for i in range(30)]
    small = TorchLearner(ModelSpec(image_size=16, width=8), TrainConfig(min_steps=3, max_steps=3))
    model = small.fit(raw, [int(v) for v in labels[:30]], [str(i) for i in range(10)], seed=0)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.history["members"][0]["device"] == expected
    # Whatever it trained on, the model comes back on the CPU (checkpoints, scoring).
    assert all(p.device.type == "cpu" for p in model.members[0].parameters())


def test_check_says_where_training_runs_and_what_it_takes_from_the_pool(tmp_path: Path) -> None:
    from connector.cli.main import main

    config = tmp_path / "settings.toml"
    config.write_text(
        f'[storage]\nkind = "local"\nlocal_root = "{tmp_path}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[label_studio]\nurl = "http://127.0.0.1:9"\n'
        '[model]\ndevice = "cpu"\npretrain = "simclr_gray"\nsemi_supervised = "fixmatch"\n'
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    line = next(ln for ln in result.output.splitlines() if ln.startswith("ok   training"))
    assert line == (
        "ok   training: small_cnn, 32 px, on cpu (model.device = 'cpu'); fixmatch on up to "
        "2000 pool images a run; simclr_gray pre-training (300 steps, every 5 rounds)"
    ), result.output
