"""The small protocols the round logic depends on.

``cycle`` talks to Label Studio and to object storage only through these, so the same
round code runs against the real servers (``labelstudio.LabelStudioAdapter``,
``storage.S3Store`` / ``storage.LocalStore``) and against in-memory fakes in unit tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class ObjectInfo:
    """One object of the pool, as listed. ``key`` is relative to the configured prefix."""

    key: str
    etag: str
    size: int
    last_modified: datetime | None = None


class ObjectStore(Protocol):
    """Where the pool lives: an S3-compatible bucket or a local folder."""

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Image objects under the prefix in key order, strictly after ``start_after``.

        Streams page by page; never holds the whole listing in memory.
        """
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes. Raises ``KeyError`` if it does not exist."""
        ...

    def read_many(
        self, keys: Iterable[str], max_workers: int = 8
    ) -> Iterator[tuple[str, bytes | Exception]]:
        """Read objects concurrently (bounded), yielding ``(key, bytes or error)``.

        At most ``max_workers`` reads are in flight and results are yielded in input
        order, so memory stays bounded however long ``keys`` is.
        """
        ...

    def url_for(self, key: str) -> str:
        """The URL a Label Studio task uses for this object (``s3://bucket/prefix/key``)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object as a file on this machine, if the store is a local folder (its
        labeled items then need no cache copy); None otherwise."""
        ...

    def describe(self) -> str:
        """A short human description without secrets, e.g. ``s3://bucket/prefix``."""
        ...


# --------------------------------------------------------------------------- labeling

Split = Literal["train", "validation"]


@dataclass(frozen=True)
class TaskToPush:
    """One pool item to be imported as a Label Studio task, with its prelabel.

    ``priority`` is 0 for the item to label first. The adapter encodes it in the
    prediction score so that Label Studio's uncertainty sampling (lowest score first)
    serves the batch in the connector's order; the model's confidence is kept on the
    prediction result.
    """

    item_id: str
    image_url: str
    round: int
    split: Split
    priority: int
    predicted_label: str | None = None
    confidence: float | None = None
    acquisition_score: float | None = None


LabelStatus = Literal["labeled", "skipped", "unlabeled", "invalid"]


@dataclass(frozen=True)
class TaskLabelState:
    """The resolved labeling state of one task, as Label Studio has it now.

    Polling returns the *current* state of every task changed since the watermark, so
    applying the same state twice is harmless (an overlap window costs nothing).

    - ``labeled``: a finished annotation chose ``label`` (a class of the label map).
    - ``skipped``: the task was skipped/cancelled and has no finished annotation.
    - ``unlabeled``: no annotation is left (e.g. it was deleted): a label is withdrawn.
    - ``invalid``: the annotation cannot be used (unknown label, no choice, several
      choices); ``reason`` says why and how to fix it. The item is quarantined, not lost.
    """

    task_id: int
    item_id: str
    status: LabelStatus
    label: str | None = None
    annotation_id: int | None = None
    annotation_updated_at: str | None = None
    annotator: str | None = None
    reason: str | None = None
    task_updated_at: str | None = None


@dataclass(frozen=True)
class PollResult:
    states: list[TaskLabelState]
    #: The new watermark: the largest ``updated_at`` seen (UTC), or the old one.
    watermark: datetime | None
    #: Tasks in the project that carry no connector item id (made by hand); ignored.
    foreign_tasks: int = 0


@dataclass(frozen=True)
class ProjectInfo:
    project_id: int
    title: str
    image_field: str
    choices_name: str
    choices: list[str]
    task_count: int
    warnings: list[str] = field(default_factory=list)


class LabelingBackend(Protocol):
    """Label Studio, seen by the round logic."""

    def check_project(self, classes: Sequence[str]) -> ProjectInfo:
        """Verify the label config fits the settings; raise ``ConfigError`` naming the fix."""
        ...

    def existing_tasks(self, item_ids: Sequence[str] | None = None) -> dict[str, int]:
        """``item_id -> task_id`` of the connector's tasks already in the project.

        With ``item_ids``, only those are looked up (cost proportional to their number).
        """
        ...

    def push(self, tasks: Sequence[TaskToPush], model_version: str) -> dict[str, int]:
        """Import tasks with predictions, idempotently; returns ``item_id -> task_id``.

        Reconciles first: items that already have a task are not imported again.
        """
        ...

    def set_model_version(self, model_version: str) -> None: ...

    def withdraw_tasks(self, task_ids: Sequence[int], *, skipped_too: bool = False) -> list[int]:
        """Delete those of these tasks that nobody annotated; returns the ids that are gone.

        A task with a finished annotation is kept; one that was only skipped is kept too
        unless ``skipped_too``. Ids that no longer exist count as gone (a retry after a
        crash finds its work done).
        """
        ...

    def poll(self, since: datetime | None) -> PollResult:
        """The label state of every connector task updated since ``since`` (all if None)."""
        ...

    def missing_tasks(self, tasks: Mapping[int, str]) -> list[int]:
        """Of these open tasks (``task_id -> item_id``), those that no longer exist
        (deleted by hand), or whose id now holds another item (Label Studio on SQLite
        gives a deleted newest task's id to the next import). Its cost follows the number
        of tasks asked about, not the project's size."""
        ...
