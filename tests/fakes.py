"""In-memory fakes of the ports, for unit tests of the round logic only.

Integration tests use the real servers (tests/fixtures); these fakes keep the state
machine's tests fast and let them inject faults at exact points.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression

from connector.contracts.learner import ImageRef, Progress, Scored, UnlabeledPool
from connector.contracts.ports import (
    ObjectInfo,
    PollResult,
    ProjectInfo,
    TaskLabelState,
    TaskToPush,
)
from connector.devtools.datasets import DIGIT_CLASSES
from connector.learning.training import evaluate_predictions
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.settings import Settings
from connector.state import StateDB
from connector.storage.cache import LabeledCache
from strategies import PoolOutputs


class MemoryStore:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.reads = 0

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if start_after is None or key > start_after:
                yield ObjectInfo(
                    key, f"etag-{hash(self.objects[key]) & 0xFFFF}", len(self.objects[key])
                )

    def read(self, key: str) -> bytes:
        self.reads += 1
        return self.objects[key]

    def read_many(
        self, keys: Iterable[str], max_workers: int = 8
    ) -> Iterator[tuple[str, bytes | Exception]]:
        for key in keys:
            try:
                yield key, self.read(key)
            except KeyError as exc:
                yield key, exc

    def url_for(self, key: str) -> str:
        return f"mem://{key}"

    def local_path(self, key: str) -> Path | None:
        return None

    def describe(self) -> str:
        return "memory"


@dataclass
class FakeTask:
    id: int
    item_id: str
    task: TaskToPush
    model_version: str
    status: str = "unlabeled"
    label: str | None = None
    annotation_id: int | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class FakeLabeling:
    """Label Studio in memory: tasks keyed by item id, a clock for ``updated_at``."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.tasks: dict[str, FakeTask] = {}
        self.import_calls = 0
        self.model_version: str | None = None
        self.fail_after_import: int | None = None  # crash after importing N tasks
        self._clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._next_id = 0

    def tick(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def check_project(self, classes: Sequence[str]) -> ProjectInfo:
        return ProjectInfo(1, "fake", "image", "label", self.classes, len(self.tasks))

    def existing_tasks(self, item_ids: Sequence[str] | None = None) -> dict[str, int]:
        ids = self.tasks if item_ids is None else [i for i in item_ids if i in self.tasks]
        return {i: self.tasks[i].id for i in ids}

    def push(self, tasks: Sequence[TaskToPush], model_version: str) -> dict[str, int]:
        self.import_calls += 1
        out = self.existing_tasks([t.item_id for t in tasks])
        for t in tasks:
            if t.item_id in out:
                continue
            if self.fail_after_import is not None and self.fail_after_import <= 0:
                self.fail_after_import = None
                raise ConnectionError("simulated crash mid-import")
            if self.fail_after_import is not None:
                self.fail_after_import -= 1
            self._next_id += 1
            task = FakeTask(self._next_id, t.item_id, t, model_version, updated_at=self.tick())
            self.tasks[t.item_id] = task
            out[t.item_id] = task.id
        return out

    def set_model_version(self, model_version: str) -> None:
        self.model_version = model_version

    def withdraw_tasks(self, task_ids: Sequence[int], *, skipped_too: bool = False) -> list[int]:
        deletable = ("unlabeled", "skipped") if skipped_too else ("unlabeled",)
        by_id = {t.id: item for item, t in self.tasks.items()}
        gone = []
        for task_id in task_ids:
            item = by_id.get(task_id)
            if item is None:
                gone.append(task_id)
            elif self.tasks[item].status in deletable:
                del self.tasks[item]
                gone.append(task_id)
        return gone

    def missing_tasks(self, tasks: Mapping[int, str]) -> list[int]:
        holds = {t.id: item for item, t in self.tasks.items()}
        return [t for t, item in tasks.items() if holds.get(t) != item]

    def annotate(self, item_id: str, status: str, label: str | None = None) -> None:
        task = self.tasks[item_id]
        task.status, task.label = status, label
        task.annotation_id = None if status == "unlabeled" else (task.annotation_id or 0) + 1
        task.updated_at = self.tick()

    def poll(self, since: datetime | None) -> PollResult:
        changed = [t for t in self.tasks.values() if since is None or t.updated_at > since]
        states = [
            TaskLabelState(
                task_id=t.id,
                item_id=t.item_id,
                status=t.status,  # type: ignore[arg-type]
                label=t.label,
                annotation_id=t.annotation_id,
                reason="unknown label" if t.status == "invalid" else None,
            )
            for t in changed
        ]
        mark = max((t.updated_at for t in changed), default=since)
        return PollResult(states, mark)


def _pixels(ref: ImageRef | bytes) -> np.ndarray:
    data = ref.read_bytes() if isinstance(ref, Path) else ref
    img = Image.open(io.BytesIO(data)).convert("L").resize((8, 8))
    return np.asarray(img, dtype=np.float32).ravel() / 255.0


class PixelLearner:
    """Logistic regression on 8x8 pixels: a fast, real learner for unit tests."""

    def __init__(self) -> None:
        self.fits = 0
        self.mc_samples_seen: list[int] = []
        self.unlabeled_seen: list[bytes] | None = None

    def init_model(self, classes: Sequence[str], *, seed: int) -> Any:
        return None

    def fit(
        self,
        images: Sequence[ImageRef],
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        seed: int,
        progress: Progress | None = None,
        unlabeled: UnlabeledPool | None = None,
    ) -> Any:
        self.fits += 1
        # What a semi-supervised learner would read: every image of the pool it is given.
        if unlabeled is not None:
            self.unlabeled_seen = unlabeled.sample(len(unlabeled), np.random.default_rng(0))
        x = np.stack([_pixels(i) for i in images])
        clf = LogisticRegression(max_iter=200, random_state=seed)
        clf.fit(x, np.asarray(labels))
        return {"clf": clf, "n_classes": len(classes)}

    def _probs(self, model: Any, x: np.ndarray) -> np.ndarray:
        clf = model["clf"]
        p = np.zeros((len(x), model["n_classes"]), dtype=np.float64)
        p[:, clf.classes_] = clf.predict_proba(x)
        return p

    def evaluate(
        self, model: Any, images: Sequence[ImageRef], labels: Sequence[int]
    ) -> dict[str, Any]:
        x = np.stack([_pixels(i) for i in images])
        pred = self._probs(model, x).argmax(axis=1)
        classes = [str(i) for i in range(model["n_classes"])]
        return evaluate_predictions(np.asarray(labels, dtype=np.int64), pred, classes)

    def score(
        self,
        model: Any,
        items: Iterable[tuple[str, bytes | Exception]],
        *,
        with_embeddings: bool,
        mc_samples: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Scored:
        self.mc_samples_seen.append(mc_samples)
        ids, rows, failures = [], [], []
        for key, data in items:
            if isinstance(data, Exception):
                failures.append((key, str(data)))
                continue
            try:
                rows.append(_pixels(data))
            except Exception as exc:
                failures.append((key, f"not an image: {exc}"))
                continue
            ids.append(key)
        x = np.stack(rows) if rows else np.zeros((0, 64), dtype=np.float32)
        probs = self._probs(model, x)[:, None, :] if rows else np.zeros((0, 1, 2))
        emb = x.astype(np.float64) if with_embeddings else None
        return Scored(PoolOutputs(probs, emb, None, ids), failures)

    def embed_labeled(self, model: Any, images: Sequence[ImageRef]) -> np.ndarray:
        return np.stack([_pixels(i) for i in images]).astype(np.float64)

    def save(self, model: Any, path: Path, extra: dict[str, Any]) -> None:
        import pickle

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(model))  # test-only learner; real checkpoints are not pickle

    def load(self, path: Path) -> Any:
        import pickle

        return pickle.loads(path.read_bytes())


# ------------------------------------------------- an engine wired to the fakes


def make_settings(tmp_path: Path, **over: Any) -> Settings:
    data: dict[str, Any] = {
        "storage": {"kind": "local", "local_root": str(tmp_path / "pool")},
        "state": {"dir": str(tmp_path / "state")},
        "strategy": {"name": "random", "batch_size": 20},
        "validation": {"size": 30},
        "labels": {"classes": list(DIGIT_CLASSES)},
        # A failed phase is retried on the next step (the backoff has its own test).
        "rounds": {"retry_backoff_seconds": 0},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return Settings(**data)


def settings_file(tmp_path: Path, classes: Sequence[str], extra: str = "") -> Path:
    """A settings file for the CLI naming the state db of ``build(tmp_path, ...)`` (its
    defaults, plus ``extra`` TOML)."""
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[storage]\nkind = "local"\nlocal_root = "{tmp_path / "pool"}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        '[strategy]\nname = "random"\nbatch_size = 20\n'
        "[validation]\nsize = 30\n"
        f"[labels]\nclasses = {json.dumps(list(classes))}\n{extra}"
    )
    return config


def build(
    tmp_path: Path, objects: dict[str, bytes], **over: Any
) -> tuple[RoundEngine, FakeLabeling, PixelLearner]:
    settings = make_settings(tmp_path, **over)
    labeling = FakeLabeling(DIGIT_CLASSES)
    learner = PixelLearner()
    ports = Ports(
        StateDB(settings.db_path()),
        MemoryStore(objects),
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    return RoundEngine(settings, ports, learner, DIGIT_CLASSES), labeling, learner


def label_all(labeling: FakeLabeling, truth: dict[str, str], skip_every: int = 0) -> None:
    for n, (item, task) in enumerate(sorted(labeling.tasks.items())):
        if task.status != "unlabeled":
            continue
        if item not in truth:  # an unreadable image: the annotator skips it
            labeling.annotate(item, "skipped")
            continue
        if skip_every and n % skip_every == 0:
            labeling.annotate(item, "skipped")
        else:
            labeling.annotate(item, "labeled", truth[item])
