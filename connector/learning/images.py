"""Image decoding and tensor transforms shared by training, scoring and simulation.

Images enter as encoded bytes (PNG, JPEG, ...) or file paths and leave as ``uint8``
tensors ``[C, H, W]`` of a fixed size, so a labeled set or a pool batch can be stacked
into one ``[N, C, H, W]`` tensor. Conversion to float, normalisation and augmentation
happen later, in batches, on the tensors (cheap, and the same code serves every model).

Decoding failures raise ``BadImage`` with a short reason; callers decide whether to skip
(pool scoring) or fail (a labeled item).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

ImageSource = bytes | str | os.PathLike[str]

#: PIL modes that hold one channel of intensity.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"})

#: Guard against decompression bombs in a pool of untrusted objects (pixels).
MAX_PIXELS = 64_000_000


class BadImage(ValueError):
    """An object that cannot be decoded as an image; ``str(err)`` is the reason."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise BadImage("zero-byte object")
        fh: io.BytesIO | str | os.PathLike[str] = io.BytesIO(data)
    else:
        fh = source
    try:
        img = Image.open(fh)
        if img.width * img.height > MAX_PIXELS:
            raise BadImage(f"image of {img.width}x{img.height} pixels is too large")
        # load() forces the full decode, so a truncated file fails here, not later.
        img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except FileNotFoundError as exc:
        raise BadImage(f"file not found: {exc.filename}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"corrupt or truncated image ({exc})") from None
    return img


def image_channels(source: ImageSource) -> int:
    """1 for a grayscale image, 3 for anything with colour (palette, RGB, RGBA, CMYK...)."""
    return 1 if _open(source).mode in _GRAY_MODES else 3


def infer_channels(sources: Iterable[ImageSource], limit: int = 64) -> int:
    """3 if any of the first ``limit`` decodable images has colour, else 1."""
    seen = 0
    for src in sources:
        try:
            if image_channels(src) == 3:
                return 3
        except BadImage:
            continue
        seen += 1
        if seen >= limit:
            break
    return 1


def decode_image(source: ImageSource, channels: int, size: int) -> torch.Tensor:
    """Decode one image to a ``uint8`` tensor ``[channels, size, size]``.

    Grayscale images given to a 3-channel model are replicated, colour images given to
    a 1-channel model are converted to luminance. Non-square images are resized
    (aspect ratio not kept: classification of the whole frame). Raises ``BadImage``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = _open(source)
    try:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            arr = np.asarray(img, dtype=np.float64)
            hi = float(arr.max()) if arr.size else 0.0
            arr = arr * (255.0 / hi) if hi > 255 else arr
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
        mode = "L" if channels == 1 else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr8 = np.array(img, dtype=np.uint8)  # a writable copy, owned by the tensor
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot convert image ({exc})") from None
    arr8 = arr8[None, :, :] if arr8.ndim == 2 else arr8.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr8))


#: ``decode(source, channels, size)``: ``decode_image`` or a ``DecodeMemo``.
Decoder = Callable[[ImageSource, int, int], torch.Tensor]


class DecodeMemo:
    """``decode_image`` that remembers what it decoded, by the image's content.

    Hand-made rather than ``functools.lru_cache`` because the key is a digest of the bytes
    (a path's content can change, and bytes are not worth hashing twice), and there is no
    bound: it is meant for ``simulate``, which re-reads the same few thousand labeled
    images every round (decoding was about a tenth of its time); the daemon streams its
    pool and never keeps decoded images.
    """

    def __init__(self) -> None:
        self._decoded: dict[tuple[bytes, int, int], torch.Tensor] = {}

    def __call__(self, source: ImageSource, channels: int, size: int) -> torch.Tensor:
        if isinstance(source, bytes):
            data = source
        else:
            try:
                data = Path(source).read_bytes()
            except OSError:
                return decode_image(source, channels, size)  # raises BadImage, naming why
        key = (hashlib.blake2b(data, digest_size=16).digest(), channels, size)
        hit = self._decoded.get(key)
        if hit is None:
            hit = self._decoded[key] = decode_image(data, channels, size)
        return hit


def decode_many(
    sources: Sequence[ImageSource], channels: int, size: int, decode: Decoder | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode a sequence of images into ``uint8 [M, C, size, size]``.

    Returns the stacked tensor, the indices into ``sources`` that decoded, and
    ``(index, reason)`` for each that did not. ``decode`` defaults to ``decode_image``.
    """
    decode = decode or decode_image
    tensors: list[torch.Tensor] = []
    ok: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, src in enumerate(sources):
        try:
            tensors.append(decode(src, channels, size))
            ok.append(i)
        except BadImage as exc:
            bad.append((i, str(exc)))
    if tensors:
        x = torch.stack(tensors)
    else:
        x = torch.empty((0, channels, size, size), dtype=torch.uint8)
    return x, ok, bad


def to_float(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> normalised ``float32``; ``mean``/``std`` are ``[C]`` in 0..1.

    A 1-channel batch fed to a 3-channel normalisation (pretrained weights) is expanded.
    """
    x = x_uint8.to(torch.float32).div_(255.0)
    if x.shape[1] == 1 and mean.numel() == 3:
        x = x.expand(-1, 3, -1, -1)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (0..1 scale) of ``uint8 [N, C, H, W]``; std floored."""
    x = x_uint8.to(torch.float32).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-2) if x.numel() > 1 else torch.ones_like(mean)
    return mean, std


def random_affine(
    x_B_C_H_W: torch.Tensor,
    generator: torch.Generator,
    *,
    max_rotate_deg: float = 12.0,
    max_translate: float = 0.1,
    scale_range: tuple[float, float] = (0.9, 1.1),
    hflip: bool = False,
) -> torch.Tensor:
    """Small random rotations, shifts, zooms (and optional mirror) of a float batch.

    ``max_translate`` is a fraction of the image side. Pixels that come from outside
    the image repeat the border, which for centred objects on a plain background (digits,
    documents, product shots) is the background. One fused ``grid_sample`` per batch.
    """
    b = x_B_C_H_W.shape[0]
    if b == 0:
        return x_B_C_H_W
    u = torch.rand((b, 4), generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    lo, hi = scale_range
    scale = lo + u[:, 1] * (hi - lo)
    tx = (u[:, 2] * 2 - 1) * max_translate * 2  # grid coordinates span [-1, 1]
    ty = (u[:, 3] * 2 - 1) * max_translate * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.ones(b)
    if hflip:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, tx], dim=1),
            torch.stack([sin * flip, cos, ty], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x_B_C_H_W.shape), align_corners=False)
    return F.grid_sample(x_B_C_H_W, grid, padding_mode="border", align_corners=False)
