"""The pretext tasks of self-supervised pre-training and whether one fits the images.

Kept free of torch, so that settings validation (``[model] pretrain``) can refuse a pretext
that does not fit at start-up without loading the learner (``learning.selfsup`` trains).
"""

from __future__ import annotations

from typing import Literal

from connector.contracts.errors import ConfigError

Pretext = Literal["none", "simclr", "simclr_gray"]
PRETEXTS: tuple[str, ...] = ("none", "simclr", "simclr_gray")


def check_pretext(pretext: str, channels: int | None) -> None:
    """Refuse a pretext task that does not fit the images (``ConfigError`` with the fix).

    ``channels`` is the images' channel count (``model.channels``, or the pool's once it
    is read); ``None`` checks nothing yet.
    """
    if pretext not in PRETEXTS:
        raise ConfigError(f"model.pretrain must be one of {', '.join(PRETEXTS)}, got {pretext!r}")
    if pretext == "simclr" and channels == 1:
        raise ConfigError(
            "model.pretrain = 'simclr' contrasts colour-distorted views, and these images "
            "have 1 channel (no colour to distort); set model.pretrain = 'simclr_gray' "
            "(crops, brightness and contrast), or model.channels = 3 if the images are "
            "colour"
        )
