"""The model: what to build (``ModelSpec``) and the ``Classifier`` built from it.

Every model built here is a ``Classifier``: a backbone that maps a normalised batch
``[B, C, H, W]`` to embeddings ``[B, D]`` (``features``) and a head ``dropout -> linear``
(``head``). Splitting the two is what makes MC dropout cheap: the backbone runs once per
batch and only the head is sampled K times (``head_samples``), following the "last-layer"
MC dropout of Gal & Ghahramani (2016), "Dropout as a Bayesian approximation", ICML.

The backbones themselves, and how their pretrained weights load, are in ``backbones``;
the trained artefact that predicts and embeds is ``trained.TrainedModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from connector.contracts.errors import ConfigError
from connector.learning.backbones import ARCHS, SMALL_CNN, build_backbone


def available_archs() -> list[str]:
    """The architectures ``ModelSpec.arch`` accepts."""
    return sorted(ARCHS)


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
        if self.arch not in ARCHS:
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

    def samples_dropout(self, k: int) -> bool:
        """Whether ``k`` head samples draw dropout masks (else they are all the same)."""
        return k > 1 and self.dropout.p > 0.0

    def head_samples(
        self,
        emb_B_D: torch.Tensor,
        k: int,
        generator: torch.Generator | None,
        uniform_B_K_D: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, K, C]`` of ``k`` dropout masks on the head over fixed embeddings.

        ``k = 1`` is the deterministic prediction (dropout off). A unit is dropped where
        its uniform draw is below the dropout rate: the draws are ``uniform_B_K_D`` when
        given (pool scoring's, by item position: ``masks.DropoutMasks``), else drawn from
        ``generator``; either way scoring is reproducible without touching global state.
        """
        if not self.samples_dropout(k):
            return self.fc(emb_B_D).unsqueeze(1).expand(-1, k, -1)
        p = self.dropout.p
        b, d = emb_B_D.shape
        if uniform_B_K_D is None:
            uniform_B_K_D = torch.rand((b, k, d), generator=generator)
        elif uniform_B_K_D.shape != (b, k, d):
            got = tuple(uniform_B_K_D.shape)
            raise ValueError(f"uniform_B_K_D has shape {got}, not {(b, k, d)}")
        keep = uniform_B_K_D >= p
        dropped = emb_B_D.unsqueeze(1) * keep.to(emb_B_D.dtype) * (1.0 / (1.0 - p))
        out: torch.Tensor = self.fc(dropped)
        return out


def build_model(spec: ModelSpec, num_classes: int, data_channels: int | None = None) -> Classifier:
    """A ``Classifier`` for ``num_classes`` classes, from the global torch RNG.

    Seed it by wrapping the call (``training`` does so under ``torch.random.fork_rng``).
    ``data_channels`` is the channel count of the images when ``spec.channels`` is unset.
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    in_channels = spec.input_channels(spec.channels or data_channels or 3)
    backbone, dim = build_backbone(
        spec.arch, spec.weights, in_channels, spec.image_size, spec.width
    )
    model = Classifier(backbone, dim, num_classes, spec.dropout)
    if spec.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model
