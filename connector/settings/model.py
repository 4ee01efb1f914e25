"""The ``[model]`` section: the network, its training, and the unlabeled pool's use
(semi-supervised FixMatch, self-supervised pre-training).

Its own module because it is the largest section; ``models.Settings`` holds it like every
other section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connector.contracts.errors import ConfigError
from connector.learning.device import check_device
from connector.learning.pretext import check_pretext


class ModelSettings(BaseModel):
    """The model, how it trains, and what it learns from the unlabeled pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(
        "small_cnn", description="small_cnn, resnet18, mobilenet_v3_small, efficientnet_b0."
    )
    weights: str | None = Field(
        None, description="torchvision weights name or a local weights file."
    )
    freeze_backbone: bool = Field(False, description="Train only the classifier head.")
    image_size: int = Field(32, ge=8, le=1024, description="Input side in pixels.")
    channels: int | None = Field(None, description="1 or 3; unset = from the images.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Head dropout (MC dropout).")
    ensemble_size: int = Field(1, ge=1, le=16, description="Deep-ensemble members.")
    mc_samples: int | None = Field(
        None,
        ge=1,
        le=100,
        description="MC-dropout passes K when scoring; unset = 20 for strategies that read "
        "the disagreement between passes (bald, batchbald, ...), 1 for the others.",
    )
    epochs: int | None = Field(None, ge=1, description="Training epochs; unset = adaptive.")
    batch_size: int | None = Field(None, ge=1, description="Training batch; unset = adaptive.")
    learning_rate: float | None = Field(None, gt=0, description="Unset = the trainer's default.")
    seed: int = Field(0, description="Seed of training and selection.")
    semi_supervised: Literal["none", "fixmatch"] = Field(
        "none",
        description="Train on the unlabeled pool too: fixmatch = FixMatch consistency "
        "(weak/strong views, confidence-thresholded pseudo-labels), pool images read from "
        "the store each round, never cached; see docs/model.md.",
    )
    semi_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="FixMatch: confidence a pseudo-label needs."
    )
    semi_ratio: int = Field(
        3,
        ge=1,
        le=16,
        description="FixMatch: unlabeled images per labeled image in a training step "
        "(a step costs about 1 + 1.3 x this).",
    )
    semi_max_unlabeled: int = Field(
        2000, ge=1, le=100_000, description="FixMatch: pool images read per training run."
    )
    pretrain: Literal["none", "simclr", "simclr_gray"] = Field(
        "none",
        description="Self-supervised pre-training of the backbone on the unlabeled pool "
        "(SimCLR): simclr = crops and colour distortion (colour images), simclr_gray = "
        "crops, brightness and contrast (grayscale). Every model starts from the encoder, "
        "and a cold start that reads embeddings (typiclust, kmeans) uses its features; "
        "see docs/model.md.",
    )
    pretrain_every_rounds: int = Field(
        5,
        ge=0,
        description="Pre-train again (continuing the encoder) after this many rounds, "
        "as the pool grows; 0 = once.",
    )
    pretrain_steps: int = Field(
        300, ge=1, le=100_000, description="Optimiser steps of one pre-training."
    )
    pretrain_max_unlabeled: int = Field(
        4000, ge=2, le=1_000_000, description="Pool images read per pre-training."
    )

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where training and pre-training run: auto = a CUDA GPU when torch "
        "sees one, else the CPU; cuda = a GPU or a start-up error. Scoring and the "
        "training-coupled strategies' networks stay on the CPU.",
    )

    @model_validator(mode="after")
    def _fits_the_machine_and_images(self) -> ModelSettings:
        try:
            check_pretext(self.pretrain, self.channels)
            check_device(self.device)
        except ConfigError as exc:  # a ValueError, for pydantic to report
            raise ValueError(str(exc)) from None
        return self
