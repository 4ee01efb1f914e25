"""Labeled datasets for ``simulate``: an ImageFolder tree or a CSV of ``path,label``, seen
by the round engine as a local store (the same image extensions as the pool listing)
with the labels kept for the oracle annotator."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connector.contracts.errors import ConfigError
from connector.contracts.ports import ObjectInfo
from connector.storage.local import IMAGE_EXTENSIONS, LocalStore


@dataclass(frozen=True)
class LabeledDataset:
    """Image files with their class index; ``classes`` sorted by name."""

    paths: list[Path]
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str


def load_dataset(path: Path | str) -> LabeledDataset:
    """An ImageFolder tree (one sub-folder per class) or a CSV of ``path,label``.

    CSV paths are relative to the CSV's folder (or absolute). A folder without class
    sub-folders but with a ``labels.csv`` is read through that CSV.
    """
    root = Path(path)
    if root.is_file():
        return _load_csv(root)
    if not root.is_dir():
        raise ConfigError(f"dataset {root} does not exist; pass an ImageFolder tree or a CSV")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        if (root / "labels.csv").is_file():
            return _load_csv(root / "labels.csv")
        raise ConfigError(
            f"{root} has no class sub-folders and no labels.csv; use one folder per class "
            "(ImageFolder layout) or a CSV with columns path,label"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([c] * len(files))
    return _checked(paths, labels, tuple(d.name for d in class_dirs), str(root))


def _load_csv(csv_path: Path) -> LabeledDataset:
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ConfigError(f"{csv_path} needs a header row with columns 'path' and 'label'")
    classes = tuple(sorted({r["label"] for r in rows}))
    index = {c: i for i, c in enumerate(classes)}
    paths = [(csv_path.parent / r["path"]) for r in rows]
    return _checked(paths, [index[r["label"]] for r in rows], classes, str(csv_path))


def _checked(
    paths: list[Path], labels: list[int], classes: tuple[str, ...], source: str
) -> LabeledDataset:
    if len(classes) < 2:
        raise ConfigError(f"{source}: found {len(classes)} class(es); a classifier needs >= 2")
    if not paths:
        raise ConfigError(f"{source}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    return LabeledDataset(paths, np.asarray(labels, dtype=np.int64), classes, source)


def dataset_keys(dataset: LabeledDataset) -> tuple[Path, list[str]]:
    """The folder that holds every image of the dataset, and each image's key under it."""
    paths = [p.resolve() for p in dataset.paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return root, [p.relative_to(root).as_posix() for p in paths]


class DatasetStore(LocalStore):
    """A local store that lists only the dataset's images (a CSV need not name every
    image of its folder), and keeps what it read in memory: a simulation reads the same
    few thousand files every round, and the dataset is on this machine anyway (the
    daemon's rule of caching only labeled items is about downloading a remote pool)."""

    def __init__(self, root: Path, keys: list[str]) -> None:
        super().__init__(root)
        self._keys = frozenset(keys)
        self._bytes: dict[str, bytes] = {}

    def read(self, key: str) -> bytes:
        data = self._bytes.get(key)
        if data is None:
            data = self._bytes[key] = super().read(key)
        return data

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return (o for o in super().list_objects(start_after) if o.key in self._keys)
