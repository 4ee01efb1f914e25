"""Backbones: a small CNN and torchvision architectures, and loading their weights.

A backbone maps a normalised batch ``[B, C, H, W]`` to embeddings ``[B, D]``; ``ARCHS``
names every architecture ``ModelSpec.arch`` accepts and ``build_backbone`` builds one.
(``model.build_model`` puts a ``Classifier`` head on top.)

Pretrained weights are either a torchvision weights name (``"ResNet18_Weights.DEFAULT"``,
downloaded by torchvision on the user's machine and cached there) or a local weights
file (``.pt``/``.pth`` loaded with ``torch.load(weights_only=True)``, ``.safetensors``
when the ``safetensors`` package is installed). Nothing here downloads by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from connector.contracts.errors import ConfigError

SMALL_CNN = "small_cnn"


# --------------------------------------------------------------------------- small CNN


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A compact VGG-style CNN for small images (digits, CIFAR-size crops).

    Input ``[B, C, H, W]`` with H, W >= 8. Images of 16 pixels or more are first halved
    by a strided stem (augmentation and resizing happen at full resolution, the
    convolutions at half of it: a 4x saving that costs little on small images); three
    stages of conv-BN-ReLU with max-pooling follow, then global average pooling.
    Output ``[B, 4 * width]``.
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 32):
        super().__init__()
        w = width
        stem_stride = 2 if image_size >= 16 else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.stages(self.stem(x))
        return out


# --------------------------------------------------------------------------- torchvision


# Each builder returns (backbone, embedding dim): the torchvision network with its final
# classification layer removed. Keys of a torchvision state_dict still match the
# backbone's, so a local weights file loads into it directly.
Builder = Callable[[object], tuple[nn.Module, int]]


def _tv_resnet(name: str) -> Builder:
    def build(weights: object) -> tuple[nn.Module, int]:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=weights)
        dim = int(net.fc.in_features)
        net.fc = nn.Identity()
        return net, dim

    return build


def _tv_mobilenet(name: str) -> Builder:
    def build(weights: object) -> tuple[nn.Module, int]:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=weights)
        # Keep the pretrained 576->1024 projection: its output is the embedding.
        dim = int(net.classifier[0].out_features)
        net.classifier = nn.Sequential(*list(net.classifier.children())[:2])
        return net, dim

    return build


def _tv_efficientnet(name: str) -> Builder:
    def build(weights: object) -> tuple[nn.Module, int]:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=weights)
        dim = int(net.classifier[-1].in_features)
        net.classifier = nn.Identity()
        return net, dim

    return build


ARCHS: dict[str, Builder | None] = {
    SMALL_CNN: None,
    "resnet18": _tv_resnet("resnet18"),
    "resnet34": _tv_resnet("resnet34"),
    "resnet50": _tv_resnet("resnet50"),
    "mobilenet_v3_small": _tv_mobilenet("mobilenet_v3_small"),
    "mobilenet_v3_large": _tv_mobilenet("mobilenet_v3_large"),
    "efficientnet_b0": _tv_efficientnet("efficientnet_b0"),
}


def _is_local_weights(weights: str) -> bool:
    return weights.endswith((".pt", ".pth", ".safetensors", ".bin")) or Path(weights).exists()


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ConfigError(f"weights file {path} does not exist; fix the path in [model] weights")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                f"{path} is a .safetensors file but the 'safetensors' package is not "
                "installed; pip install safetensors, or convert it to .pt"
            ) from None
        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"cannot load weights file {path} safely ({exc}); it must be a state_dict "
            "saved with torch.save(model.state_dict(), path)"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _load_local_weights(module: nn.Module, path: Path, arch: str) -> None:
    """Load a torchvision-format state_dict into a backbone.

    The original classification layer's tensors have no place in the backbone and are
    ignored; every tensor of the backbone must be in the file with its shape.
    """
    state = _load_state_dict_file(path)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing_body = [k for k in own if k not in usable]
    if missing_body:
        raise ConfigError(
            f"weights file {path} does not fit arch {arch!r}: {len(missing_body)} tensors "
            f"missing or of another shape (first: {missing_body[0]}); use a state_dict "
            f"saved from the same architecture"
        )
    module.load_state_dict(usable, strict=False)


def build_backbone(
    arch: str, weights: str | None, in_channels: int, image_size: int, width: int
) -> tuple[nn.Module, int]:
    """``(backbone, embedding dim)`` of ``arch``, with ``weights`` loaded if given.

    ``image_size`` and ``width`` shape the small CNN; torchvision archs ignore them.
    """
    builder = ARCHS[arch]
    if builder is None:
        if weights is not None and not _is_local_weights(weights):
            raise ConfigError(
                "small_cnn has no torchvision weights; use a local weights file or weights=None"
            )
        cnn = SmallCNN(in_channels, image_size, width)
        if weights is not None:
            _load_local_weights(cnn, Path(weights), arch)
        return cnn, cnn.out_dim

    tv_weights: object = None
    local: Path | None = None
    if weights is not None:
        if _is_local_weights(weights):
            local = Path(weights)
        else:
            import torchvision.models as tvm

            try:
                tv_weights = tvm.get_weight(weights)
            except (ValueError, KeyError, AttributeError):
                raise ConfigError(
                    f"unknown torchvision weights {weights!r}; use a name such as "
                    "'ResNet18_Weights.IMAGENET1K_V1' or a path to a local .pt file"
                ) from None
    backbone, dim = builder(tv_weights)
    if local is not None:
        _load_local_weights(backbone, local, arch)
    return backbone, dim
