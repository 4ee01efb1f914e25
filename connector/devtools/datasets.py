"""A tiny real dataset for tests and the demo: scikit-learn's handwritten digits as PNGs.

``sklearn.datasets.load_digits`` ships inside scikit-learn (1,797 images of 8x8 pixels,
10 classes), so nothing is downloaded. The images are upscaled to ``size`` x ``size``
grayscale PNGs; the labels are kept aside as ground truth, never next to the images.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class LabeledImage:
    """One image of a dataset written to disk, with its true class name."""

    key: str  # path relative to the dataset root, with forward slashes
    label: str


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 8, 8]`` uint8 (0..255) and labels ``[N]`` int64 of the digits set."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def digit_png(image_8x8: np.ndarray, size: int = 32) -> bytes:
    """Encode one 8x8 uint8 digit as a ``size`` x ``size`` grayscale PNG."""
    img = Image.fromarray(image_8x8, mode="L")
    if size != image_8x8.shape[0]:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_digits(
    out_dir: Path,
    *,
    limit: int | None = None,
    size: int = 32,
    layout: str = "flat",
    seed: int = 0,
) -> list[LabeledImage]:
    """Write digits as PNG files under ``out_dir`` and return them with their labels.

    Args:
        limit: keep a random (seeded) subset of this many images; all 1,797 when None.
        layout: ``"flat"`` writes ``digit-00042.png`` files with no hint of the label
            (a pool); ``"imagefolder"`` writes ``<label>/digit-00042.png`` (torchvision's
            ImageFolder layout, for ``al-connector simulate``).
        seed: seed of the subset choice.

    A ``labels.csv`` of ``path,label`` is written beside the images (ground truth).
    """
    if layout not in ("flat", "imagefolder"):
        raise ValueError(f"layout must be 'flat' or 'imagefolder', got {layout!r}")
    images, labels = digits_arrays()
    order: np.ndarray = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        order = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[LabeledImage] = []
    for i in order.tolist():
        label = DIGIT_CLASSES[int(labels[i])]
        name = f"digit-{i:05d}.png"
        key = f"{label}/{name}" if layout == "imagefolder" else name
        path = out_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(digit_png(images[i], size=size))
        written.append(LabeledImage(key=key, label=label))
    with (out_dir / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for item in written:
            writer.writerow([item.key, item.label])
    return written
