"""The trained artefact: ``TrainedModel`` predicts and embeds images.

A ``TrainedModel`` holds the trained ``Classifier`` members (one, or a deep ensemble),
the class names and the input normalisation (``normalisation``); it decodes images as
the model expects them and turns them into ``probs_N_K_C`` (MC dropout samples times
members) and embeddings ``emb_N_D``. ``training`` makes one, ``checkpoints`` saves and
loads it, ``scoring`` streams a pool through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from connector.contracts.errors import BadItem
from connector.learning.backbones import SMALL_CNN
from connector.learning.coupled.base import CoupledModule
from connector.learning.images import ImageSource, decode_many, to_float
from connector.learning.masks import DropoutMasks
from connector.learning.model import Classifier, ModelSpec, build_model

if TYPE_CHECKING:
    from connector.learning.selfsup import Encoder

#: Normalisation of torchvision's ImageNet weights (RGB, 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        coupled: the network a training-coupled strategy trained with the first member
            (``learning.coupled``), or None; its per-item output is ``aux[coupled.name]``.
    """

    spec: ModelSpec
    classes: tuple[str, ...]
    members: list[Classifier]
    mean: torch.Tensor
    std: torch.Tensor
    data_channels: int
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    coupled: CoupledModule | None = None

    @classmethod
    def untrained(
        cls,
        spec: ModelSpec,
        classes: Sequence[str],
        *,
        seed: int = 0,
        channels: int | None = None,
        encoder: Encoder | None = None,
    ) -> TrainedModel:
        """A model before any label: random head, pretrained backbone if ``spec.weights``,
        or the self-supervised ``encoder``'s backbone and input normalisation.

        For cold starts, where a diversity strategy needs embeddings before the first
        training. Without either its embeddings are random projections.
        """
        channels = spec.channels or channels or 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec, len(classes), channels).eval()
        c = spec.input_channels(channels)
        mean, std = normalisation(spec, torch.full((c,), 0.5), torch.full((c,), 0.25))
        history: dict[str, Any] = {"untrained": True}
        if encoder is not None:
            model.backbone.load_state_dict(encoder.backbone_for(spec))
            mean, std = normalisation(spec, encoder.mean, encoder.std)
            history["encoder"] = encoder.info
        return cls(spec, tuple(classes), [model], mean, std, channels, {}, history)

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
        *,
        masks: DropoutMasks | None = None,
        positions: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One batch of decoded ``uint8`` images -> (``probs_B_K_C`` float32, ``emb_B_D``).

        Each member's backbone runs once; its head is sampled ``mc_samples`` times
        (``mc_samples = 1`` is the deterministic prediction). The dropout masks come from
        ``masks`` by the items' ``positions`` in the pool when given (pool scoring: the
        same masks however the pool is split), else from ``generator``. Embeddings are
        the first member's.
        """
        probs, emb, _ = self.infer_aux(
            x_B_C_H_W, mc_samples, generator, with_embeddings, masks=masks, positions=positions
        )
        return probs, emb

    def infer_aux(
        self,
        x_B_C_H_W: torch.Tensor,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        with_embeddings: bool = False,
        *,
        masks: DropoutMasks | None = None,
        positions: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``infer`` plus the coupled module's per-item values (``{name: float32 [B]}``,
        empty without one), from the first member's pass over the batch."""
        if masks is not None and (positions is None or len(positions) != len(x_B_C_H_W)):
            raise ValueError("masks need one position per image of the batch")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        x = to_float(x_B_C_H_W, self.mean, self.std)
        probs: list[torch.Tensor] = []
        emb: torch.Tensor | None = None
        aux: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for i, member in enumerate(self.members):
                member.eval()
                if i == 0 and self.coupled is not None:
                    feats, values = self.coupled.eval().forward_aux(member, x)
                    aux[self.coupled.name] = values.numpy().astype(np.float32, copy=False)
                else:
                    feats = member.features(x)
                if i == 0 and with_embeddings:
                    emb = feats
                draws = None
                if (
                    masks is not None
                    and positions is not None
                    and member.samples_dropout(mc_samples)
                ):
                    draws = masks.uniform(i, positions, mc_samples, member.feature_dim)
                logits = member.head_samples(feats, mc_samples, generator, draws)
                probs.append(torch.softmax(logits, -1))
        probs_B_K_C = torch.cat(probs, dim=1).numpy().astype(np.float32, copy=False)
        emb_np = None if emb is None else emb.numpy().astype(np.float32, copy=False)
        return probs_B_K_C, emb_np, aux

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
