"""Where training runs: a CUDA GPU when torch sees one, else the CPU (``model.device``).

The setting is ``"auto"`` (a GPU when present), ``"cpu"`` or ``"cuda"`` (a GPU or a
start-up error). Torch-free at import, so settings validation can check ``"cuda"``
without loading torch when it is not asked for.

What runs on the device: the classifier's training (with FixMatch's unlabeled term) and
self-supervised pre-training. What stays on the CPU: training with a training-coupled
strategy's networks (loss prediction, VAAL, WAAL: their hooks keep CPU tensors), pool
scoring (it streams and decodes on CPU threads; at scale it goes to Ray workers,
docs/scale.md), and every checkpoint, which is saved from and loaded to the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from connector.contracts.errors import ConfigError

if TYPE_CHECKING:
    import torch

DeviceSetting = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def check_device(setting: str) -> None:
    """``ConfigError`` naming the fix for an unknown setting, or ``"cuda"`` with no GPU."""
    if setting not in DEVICES:
        raise ConfigError(f"model.device must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "model.device = 'cuda' but torch sees no GPU (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); set "
                "model.device = 'auto' (a GPU when present) or 'cpu', or install a CUDA "
                "build of torch on a machine with a GPU"
            )


def training_device(setting: str = "auto", *, coupled: bool = False) -> torch.device:
    """The device a training run uses: ``cuda`` for ``"cuda"``, and for ``"auto"`` when
    torch sees a GPU; the CPU otherwise, and always when ``coupled`` networks train."""
    import torch

    check_device(setting)
    if coupled or setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


__all__ = ["DEVICES", "DeviceSetting", "check_device", "training_device"]
