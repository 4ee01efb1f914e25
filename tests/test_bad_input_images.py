"""Bad input: image kinds the pool may hold. Rule (docs/bad-input.md): any mode Pillow
reads is converted to the model's channels; an image over ``MAX_PIXELS`` (a
decompression bomb) is refused as ``BadImage`` and quarantined, never decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from connector.learning.images import MAX_PIXELS, BadImage, decode_image


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("CMYK", (20, 12), (10, 20, 30, 40)), "JPEG"),
        (Image.fromarray(np.full((12, 20), 40000, dtype=np.uint16)), "PNG"),  # 16-bit
        (Image.new("P", (20, 12), 3), "PNG"),  # palette
        (Image.new("LA", (20, 12), (100, 50)), "PNG"),
        (Image.new("1", (20, 12), 1), "PNG"),
    ],
    ids=["cmyk-jpeg", "16-bit-png", "palette-png", "gray-alpha", "1-bit"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_unusual_modes_decode_to_the_models_channels(
    image: Image.Image, fmt: str, channels: int
) -> None:
    x = decode_image(_encode(image, fmt), channels=channels, size=16)
    assert tuple(x.shape) == (channels, 16, 16)


def test_a_huge_image_is_refused_before_it_is_decoded() -> None:
    side = int(MAX_PIXELS**0.5) + 16  # a 1-bit PNG this large is a few hundred KB
    data = _encode(Image.new("1", (side, side), 0), "PNG")
    with pytest.raises(BadImage):
        decode_image(data, channels=1, size=16)
