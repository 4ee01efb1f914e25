"""The model factory: torchvision architectures and a small CNN, behind one interface.

Every model built here is a ``Classifier``: a backbone that maps a normalised batch
``[B, C, H, W]`` to embeddings ``[B, D]`` (``features``) and a head ``dropout -> linear``
(``head``). Splitting the two is what makes MC dropout cheap: the backbone runs once per
batch and only the head is sampled K times (``mc_logits``), following the "last-layer"
MC dropout of Gal & Ghahramani (2016), "Dropout as a Bayesian approximation", ICML.

Pretrained weights are either a torchvision weights name (``"ResNet18_Weights.DEFAULT"``,
downloaded by torchvision on the user's machine and cached there) or a local weights
file (``.pt``/``.pth`` loaded with ``torch.load(weights_only=True)``, ``.safetensors``
when the ``safetensors`` package is installed). Nothing here downloads by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from connector.contracts.errors import BadItem, ConfigError
from connector.learning.images import ImageSource, decode_many, to_float

#: Normalisation of torchvision's ImageNet weights (RGB, 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SMALL_CNN = "small_cnn"


@dataclass(frozen=True)
class ModelSpec:
    """What model to build; saved in every checkpoint.

    Attributes:
        arch: ``"small_cnn"`` or a torchvision architecture (see ``available_archs()``).
        weights: ``None`` (random init), a torchvision weights name such as
            ``"ResNet18_Weights.IMAGENET1K_V1"``, or a path to a local weights file.
        freeze_backbone: train only the head (sensible with pretrained weights and few
            labels; the backbone's batch-norm statistics are frozen too).
        image_size: images are resized to ``image_size`` x ``image_size`` pixels.
        channels: 1 (grayscale) or 3 (RGB); ``None`` infers it from the labeled images.
            torchvision architectures always see 3 channels (grayscale is replicated).
        dropout: dropout rate before the last linear layer (used by MC dropout).
        ensemble_size: number of independently seeded members (a deep ensemble); each
            member contributes its own samples to ``probs_N_K_C``.
        width: base number of filters of the small CNN (ignored by other archs).
    """

    arch: str = SMALL_CNN
    weights: str | None = None
    freeze_backbone: bool = False
    image_size: int = 32
    channels: int | None = None
    dropout: float = 0.25
    ensemble_size: int = 1
    width: int = 32

    def __post_init__(self) -> None:
        if self.arch not in _ARCHS:
            raise ConfigError(
                f"unknown model arch {self.arch!r}; choose one of {', '.join(available_archs())}"
            )
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1, 3 or unset, got {self.channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ensemble_size < 1:
            raise ConfigError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if self.freeze_backbone and self.weights is None:
            raise ConfigError(
                "freeze_backbone needs pretrained weights (a frozen random backbone learns "
                "nothing); set weights or turn freeze_backbone off"
            )

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def input_channels(self, data_channels: int) -> int:
        """Channels the network's first layer takes, given the data's channels."""
        if self.arch != SMALL_CNN:
            return 3
        return self.channels or data_channels


class Classifier(nn.Module):
    """``backbone`` -> embeddings ``[B, D]`` -> ``dropout`` -> ``linear`` -> logits ``[B, C]``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, D]`` of a normalised batch ``[B, C, H, W]``."""
        out: torch.Tensor = self.backbone(x)
        return out

    def head(self, emb_B_D: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.dropout(emb_B_D))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head_samples(
        self, emb_B_D: torch.Tensor, k: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Logits ``[B, K, C]`` of ``k`` dropout masks on the head over fixed embeddings.

        ``k = 1`` is the deterministic prediction (dropout off). The masks are drawn from
        ``generator`` so that scoring is reproducible without touching global state.
        """
        if k == 1 or self.dropout.p == 0.0:
            return self.fc(emb_B_D).unsqueeze(1).expand(-1, k, -1)
        p = self.dropout.p
        b, d = emb_B_D.shape
        keep = torch.rand((b, k, d), generator=generator) >= p
        dropped = emb_B_D.unsqueeze(1) * keep.to(emb_B_D.dtype) * (1.0 / (1.0 - p))
        out: torch.Tensor = self.fc(dropped)
        return out


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


_ARCHS: dict[str, Builder | None] = {
    SMALL_CNN: None,
    "resnet18": _tv_resnet("resnet18"),
    "resnet34": _tv_resnet("resnet34"),
    "resnet50": _tv_resnet("resnet50"),
    "mobilenet_v3_small": _tv_mobilenet("mobilenet_v3_small"),
    "mobilenet_v3_large": _tv_mobilenet("mobilenet_v3_large"),
    "efficientnet_b0": _tv_efficientnet("efficientnet_b0"),
}


def available_archs() -> list[str]:
    return sorted(_ARCHS)


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


def _build_backbone(spec: ModelSpec, in_channels: int) -> tuple[nn.Module, int]:
    builder = _ARCHS[spec.arch]
    if builder is None:
        if spec.weights is not None and not _is_local_weights(spec.weights):
            raise ConfigError(
                "small_cnn has no torchvision weights; use a local weights file or weights=None"
            )
        cnn = SmallCNN(in_channels, spec.image_size, spec.width)
        if spec.weights is not None:
            _load_local_weights(cnn, Path(spec.weights), spec.arch)
        return cnn, cnn.out_dim

    tv_weights: object = None
    local: Path | None = None
    if spec.weights is not None:
        if _is_local_weights(spec.weights):
            local = Path(spec.weights)
        else:
            import torchvision.models as tvm

            try:
                tv_weights = tvm.get_weight(spec.weights)
            except (ValueError, KeyError, AttributeError):
                raise ConfigError(
                    f"unknown torchvision weights {spec.weights!r}; use a name such as "
                    "'ResNet18_Weights.IMAGENET1K_V1' or a path to a local .pt file"
                ) from None
    backbone, dim = builder(tv_weights)
    if local is not None:
        _load_local_weights(backbone, local, spec.arch)
    return backbone, dim


def build_model(spec: ModelSpec, num_classes: int, data_channels: int | None = None) -> Classifier:
    """A ``Classifier`` for ``num_classes`` classes, from the global torch RNG.

    Seed it by wrapping the call (``training`` does so under ``torch.random.fork_rng``).
    ``data_channels`` is the channel count of the images when ``spec.channels`` is unset.
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    in_channels = spec.input_channels(spec.channels or data_channels or 3)
    backbone, dim = _build_backbone(spec, in_channels)
    model = Classifier(backbone, dim, num_classes, spec.dropout)
    if spec.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model


def normalisation(
    spec: ModelSpec, data_mean: torch.Tensor, data_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) the model's inputs are normalised with.

    Pretrained weights expect ImageNet statistics on RGB; a model trained from scratch
    uses the labeled images' own statistics (replicated to 3 channels for torchvision).
    """
    if spec.pretrained and spec.arch != SMALL_CNN:
        return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if spec.arch != SMALL_CNN and data_mean.numel() == 1:
        return data_mean.repeat(3), data_std.repeat(3)
    return data_mean.clone(), data_std.clone()


# --------------------------------------------------------------------------- inference


@dataclass
class TrainedModel:
    """A trained classifier (one or several ensemble members) and what it needs to predict.

    Attributes:
        spec: the ``ModelSpec`` it was built from.
        classes: class names; column ``c`` of every probability array is ``classes[c]``.
        members: the ensemble members (one unless ``spec.ensemble_size > 1``).
        mean, std: per-channel input normalisation ``[C]`` (0..1 scale).
        data_channels: channels images are decoded to (1 or 3).
        config: the training settings (``TrainConfig`` as a dict).
        history: what training did (steps, seconds, holdout accuracy), JSON-serialisable.
    """

    spec: ModelSpec
    classes: tuple[str, ...]
    members: list[Classifier]
    mean: torch.Tensor
    std: torch.Tensor
    data_channels: int
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def untrained(
        cls, spec: ModelSpec, classes: Sequence[str], *, seed: int = 0, channels: int | None = None
    ) -> TrainedModel:
        """A model before any label: random head, pretrained backbone if ``spec.weights``.

        For cold starts, where a diversity strategy needs embeddings before the first
        training. Without pretrained weights its embeddings are random projections.
        """
        channels = spec.channels or channels or 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec, len(classes), channels).eval()
        c = spec.input_channels(channels)
        mean, std = normalisation(spec, torch.full((c,), 0.5), torch.full((c,), 0.25))
        return cls(spec, tuple(classes), [model], mean, std, channels, {}, {"untrained": True})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_dim(self) -> int:
        return self.members[0].feature_dim

    def samples_per_item(self, mc_samples: int) -> int:
        """K of ``probs_N_K_C``: MC samples per member times ensemble members."""
        return mc_samples * len(self.members)

    def decode(
        self, images: Sequence[ImageSource]
    ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
        """Decode images as this model expects them (see ``images.decode_many``)."""
        return decode_many(images, self.data_channels, self.spec.image_size)

    def infer(
        self,
        x_B_C_H_W: torch.Tensor,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        with_embeddings: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One batch of decoded ``uint8`` images -> (``probs_B_K_C`` float32, ``emb_B_D``).

        Each member's backbone runs once; its head is sampled ``mc_samples`` times
        (dropout masks from ``generator``; ``mc_samples = 1`` is the deterministic
        prediction). Embeddings are the first member's.
        """
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        x = to_float(x_B_C_H_W, self.mean, self.std)
        probs: list[torch.Tensor] = []
        emb: torch.Tensor | None = None
        with torch.inference_mode():
            for i, member in enumerate(self.members):
                member.eval()
                feats = member.features(x)
                if i == 0 and with_embeddings:
                    emb = feats
                probs.append(torch.softmax(member.head_samples(feats, mc_samples, generator), -1))
        probs_B_K_C = torch.cat(probs, dim=1).numpy().astype(np.float32, copy=False)
        return probs_B_K_C, (None if emb is None else emb.numpy().astype(np.float32, copy=False))

    def predict_tensor(
        self, x_N_C_H_W: torch.Tensor, mc_samples: int = 1, batch_size: int = 256, seed: int = 0
    ) -> np.ndarray:
        """``probs_N_K_C`` of decoded images, in batches."""
        gen = torch.Generator().manual_seed(seed)
        out = [
            self.infer(x_N_C_H_W[i : i + batch_size], mc_samples, gen)[0]
            for i in range(0, len(x_N_C_H_W), batch_size)
        ]
        if not out:
            k = self.samples_per_item(mc_samples)
            return np.empty((0, k, self.num_classes), dtype=np.float32)
        return np.concatenate(out)

    def embed_tensor(self, x_N_C_H_W: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """``emb_N_D`` (first member's penultimate features) of decoded images."""
        x_norm_batches = [
            to_float(x_N_C_H_W[i : i + batch_size], self.mean, self.std)
            for i in range(0, len(x_N_C_H_W), batch_size)
        ]
        member = self.members[0].eval()
        with torch.inference_mode():
            out = [member.features(xb).numpy() for xb in x_norm_batches]
        if not out:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _decode_all(self, images: Sequence[ImageSource]) -> torch.Tensor:
        x, _, bad = self.decode(images)
        if bad:
            i, reason = bad[0]
            raise BadItem(str(images[i]) if not isinstance(images[i], bytes) else f"#{i}", reason)
        return x

    def predict(
        self,
        images: Sequence[ImageSource],
        mc_samples: int = 1,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """``probs_N_K_C`` (float32) of encoded images; K = ``mc_samples`` x members.

        Raises ``BadItem`` if an image cannot be decoded (pool scoring, which skips them,
        is ``scoring.score_pool``).
        """
        return self.predict_tensor(self._decode_all(images), mc_samples, batch_size, seed)

    def embed(self, images: Sequence[ImageSource], batch_size: int = 256) -> np.ndarray:
        """``emb_N_D`` (float32) of encoded images."""
        return self.embed_tensor(self._decode_all(images), batch_size)
