"""Model checkpoints: one safe-to-load file per trained model, plus its metadata as JSON.

A checkpoint is a ``torch.save`` of plain containers, read back with
``torch.load(weights_only=True)``: loading one never runs pickled code. It holds every
weight, so a model is rebuilt from it without fetching pretrained weights.

Crash safety: a checkpoint is written atomically (temporary file, fsync, rename), so a
training run that dies leaves the previous file, or none, never half of one. A file that
is partial anyway (copied while written, a full disk under a non-atomic copy) fails
torch's zip checks and raises ``CheckpointError``: it is never loaded, and the SCORE
phase sends its round back to TRAIN (``rounds.phases.score``).

The same format, as bytes (``checkpoint_bytes``, ``load_checkpoint_bytes``), carries a
model to the processes of a Ray cluster (``connector.scoring``): they load it with the
same safe loader, never by unpickling a model object.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from connector.contracts.errors import CheckpointError, ConfigError
from connector.files import atomic_write, atomic_write_text
from connector.learning.coupled import build_module
from connector.learning.model import Classifier, ModelSpec, build_model
from connector.learning.trained import TrainedModel

CHECKPOINT_FORMAT = "al-connector-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    trained: TrainedModel, path: Path | str, extra: dict[str, Any] | None = None
) -> None:
    """Write ``trained`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    The file is a ``torch.save`` of plain containers: ``{"meta": <JSON text>, "tensors":
    {name: tensor}}``, so ``torch.load(weights_only=True)`` reads it without running any
    pickled code. ``meta`` holds the model spec, the label map (class order), the
    training settings and history, and ``extra`` (e.g. round, model version; it must be
    JSON-serialisable); with a training-coupled module, its name and constructor
    arguments (``coupled``) beside its tensors (``coupled.*``). A copy of ``meta`` is
    written beside it as ``<path>.json`` for people and tools.
    """
    path = Path(path)
    meta_text, payload = _payload(trained, extra)
    atomic_write(path, lambda p: torch.save(payload, p))
    atomic_write_text(Path(f"{path}.json"), meta_text + "\n")


def checkpoint_bytes(trained: TrainedModel, extra: dict[str, Any] | None = None) -> bytes:
    """``trained`` in the checkpoint format, in memory (for ``load_checkpoint_bytes``)."""
    buffer = io.BytesIO()
    torch.save(_payload(trained, extra)[1], buffer)
    return buffer.getvalue()


def _payload(trained: TrainedModel, extra: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": asdict(trained.spec),
        "classes": list(trained.classes),
        "data_channels": trained.data_channels,
        "members": len(trained.members),
        "train_config": trained.config,
        "history": trained.history,
        "extra": extra or {},
        "torch": torch.__version__,
    }
    if trained.coupled is not None:
        # Optional key: checkpoints without it (older ones too) load with no module.
        meta["coupled"] = {"name": trained.coupled.name, "config": trained.coupled.config()}
    meta_text = json.dumps(meta, indent=2, sort_keys=True)
    tensors: dict[str, torch.Tensor] = {
        "norm.mean": trained.mean.detach().clone(),
        "norm.std": trained.std.detach().clone(),
    }
    for i, member in enumerate(trained.members):
        for name, value in member.state_dict().items():
            tensors[f"members.{i}.{name}"] = value.detach().clone()
    if trained.coupled is not None:
        for name, value in trained.coupled.state_dict().items():
            tensors[f"coupled.{name}"] = value.detach().clone()
    return meta_text, {"meta": meta_text, "tensors": tensors}


def _load_payload(
    source: Path | io.BytesIO, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        tensors = payload["tensors"]
    except Exception as exc:
        # Truncated or partial: torch's zip reader checks the archive's directory and
        # every record's CRC, so no prefix of a checkpoint loads.
        raise CheckpointError(
            f"{name} is not a readable al-connector checkpoint ({type(exc).__name__}: "
            f"{exc}); the round that wrote it trains again (`al-connector run`), or delete "
            "the file"
        ) from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{name} has format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this connector reads {CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}"
        )
    return meta, tensors


def load_checkpoint(path: Path | str) -> TrainedModel:
    """Load a checkpoint written by ``save_checkpoint`` (no pickled code is run).

    The model is rebuilt without fetching pretrained weights: the file holds them all.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _rebuild(*_load_payload(path, str(path)))


def load_checkpoint_bytes(data: bytes, name: str = "the model sent to this worker") -> TrainedModel:
    """A model from ``checkpoint_bytes`` (no pickled code is run); ``name`` is for errors."""
    return _rebuild(*_load_payload(io.BytesIO(data), name))


def _rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TrainedModel:
    spec = ModelSpec(**meta["spec"])
    shell = replace(spec, weights=None, freeze_backbone=False)
    classes = tuple(meta["classes"])
    members: list[Classifier] = []
    for i in range(int(meta["members"])):
        prefix = f"members.{i}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        with torch.random.fork_rng(devices=[]):
            model = build_model(shell, len(classes), int(meta["data_channels"]))
        model.load_state_dict(state)
        members.append(model.eval())
    coupled = None
    if meta.get("coupled"):
        with torch.random.fork_rng(devices=[]):
            coupled = build_module(meta["coupled"]["name"], meta["coupled"]["config"])
        prefix = "coupled."
        coupled.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        coupled.eval()
    return TrainedModel(
        spec=spec,
        classes=classes,
        members=members,
        mean=tensors["norm.mean"],
        std=tensors["norm.std"],
        data_channels=int(meta["data_channels"]),
        config=meta["train_config"],
        history=meta["history"],
        coupled=coupled,
    )


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "checkpoint_bytes",
    "load_checkpoint",
    "load_checkpoint_bytes",
    "save_checkpoint",
]
