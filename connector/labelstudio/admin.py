"""Project administration and annotator-side helpers of the Label Studio adapter.

The source-storage connection (URL resolution only, never a sync) and the small
annotator helpers the demo and tests use. Mixed into ``LabelStudioAdapter``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from label_studio_sdk.core.api_error import ApiError

from connector.contracts.errors import AuthError, ConfigError, ConnectorError
from connector.labelstudio.client import LOOKUP_FIELDS, LOOKUP_PAGE, LabelStudioClient
from connector.labelstudio.config import LabelConfigInfo
from connector.labelstudio.query import ITEM_KEY, PRIORITY_KEY, dm_filter

log = logging.getLogger(__name__)


class LabelStudioAdminMixin:
    """Needs ``ls``, ``project_id``, ``choices_name``, ``_label_config``, ``_class_of``."""

    ls: LabelStudioClient
    project_id: int
    choices_name: str
    _pending_storage: dict[str, Any] | None = None

    def _label_config(self) -> LabelConfigInfo:
        raise NotImplementedError

    def _class_of(self) -> dict[str, str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ storage
    def connect_source_storage(
        self,
        bucket: str | None,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        presign: bool = True,
        title: str | None = None,
    ) -> int:
        """Connect the bucket as S3 source storage so Label Studio resolves ``s3://`` URLs.

        For URL resolution only: the storage is never synced (a sync would import every
        object as a task). An existing connection to the same bucket/prefix is reused.
        """
        if not bucket:
            raise ConfigError("storage.bucket is not set; the bucket cannot be connected")
        try:
            return self._connect_source_storage(
                bucket, prefix, endpoint, region, access_key_id, secret_access_key, presign, title
            )
        except ConnectorError as exc:
            if isinstance(exc, AuthError) or not isinstance(exc.__cause__, ApiError):
                raise  # the token, or Label Studio down: their messages name the fix
            where = f"s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
            raise ConfigError(
                f"Label Studio could not connect {where} as source storage ({exc}); check "
                f"that bucket {bucket!r} exists and holds objects under prefix {prefix!r}, "
                "and that the Label Studio server reaches the endpoint with the storage "
                "credentials (or set storage.connect_label_studio = false and connect "
                "the bucket in the project's Cloud Storage settings yourself)"
            ) from None

    def defer_source_storage(self, **connection: Any) -> None:
        """Connect the bucket before the next push instead of now (its prefix is empty,
        which Label Studio refuses to connect; nothing is pushed before objects exist)."""
        self._pending_storage = connection

    def connect_pending_storage(self) -> None:
        pending = getattr(self, "_pending_storage", None)
        if pending:
            self.connect_source_storage(**pending)
            self._pending_storage = None

    def _connect_source_storage(
        self,
        bucket: str,
        prefix: str,
        endpoint: str | None,
        region: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        presign: bool,
        title: str | None,
    ) -> int:
        existing = self.ls.call(
            "list source storages", self.ls.sdk.import_storage.s3.list, project=self.project_id
        )
        for storage in existing or []:
            if storage.bucket == bucket and (storage.prefix or "") == (prefix or ""):
                return int(storage.id or 0)
        storage = self.ls.call(
            "connect the bucket as source storage",
            self.ls.sdk.import_storage.s3.create,
            project=self.project_id,
            title=title or f"al-connector {bucket}/{prefix}".rstrip("/"),
            bucket=bucket,
            prefix=prefix or None,
            s3endpoint=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            presign=presign,
            use_blob_urls=False,
            recursive_scan=True,
        )
        log.info(
            "project %d: s3://%s/%s connected for URL resolution", self.project_id, bucket, prefix
        )
        return int(storage.id or 0)

    # ------------------------------------------------------------------ withdrawing
    def withdraw_tasks(self, task_ids: Sequence[int], *, skipped_too: bool = False) -> list[int]:
        """Delete those of these tasks that nobody annotated; returns the ids that are gone.

        A task with a finished annotation is kept; a skipped one too unless ``skipped_too``.
        Ids that no longer exist count as gone, so a retry after a crash finds its work
        done. Label Studio has no conditional delete: an annotation submitted between the
        check and the delete (milliseconds) is lost with its task.
        """
        gone: list[int] = []
        for lo, hi in _windows(sorted({int(t) for t in task_ids})):
            window = _id_range(lo, hi)
            unannotated = [*window, dm_filter("total_annotations", "equal", "Number", 0)]
            if not skipped_too:
                unannotated.append(dm_filter("cancelled_annotations", "equal", "Number", 0))
            exists = self._task_ids(window)
            deletable = self._task_ids(unannotated)
            for task_id in sorted(t for t in task_ids if lo <= int(t) <= hi):
                if task_id not in exists:
                    gone.append(task_id)
                elif task_id in deletable:
                    self.ls.call("delete a task", self._delete_task, task_id)
                    gone.append(task_id)
        if gone:
            log.info("project %d: %d tasks withdrawn", self.project_id, len(gone))
        return gone

    def missing_tasks(self, tasks: Mapping[int, str]) -> list[int]:
        """Of these open tasks (``task_id -> item_id``), those gone from the project
        (deleted by hand) or whose id now holds another item: Label Studio on SQLite gives
        a deleted newest task's id to the next import, so an id alone can look present.

        One id-range query per window of nearby ids, reading ids and data only, so the
        cost follows the open tasks asked about, not the project's size."""
        ids = sorted({int(t) for t in tasks})
        missing: list[int] = []
        for lo, hi in _windows(ids):
            holds = self._task_items(_id_range(lo, hi))
            missing += [t for t in ids if lo <= t <= hi and holds.get(t) != tasks[t]]
        return missing

    def _task_ids(self, filters: list[dict[str, Any]]) -> set[int]:
        return set(self._task_items(filters))

    def _task_items(self, filters: list[dict[str, Any]]) -> dict[int, str | None]:
        """``task_id -> item_id`` (None for a task that is not the connector's)."""
        rows = self.ls.tasks_where(filters, size=LOOKUP_PAGE, fields=LOOKUP_FIELDS)
        return {int(t.id): (t.data or {}).get(ITEM_KEY) for t in rows}

    def _delete_task(self, task_id: int) -> None:
        try:
            self.ls.sdk.tasks.delete(id=str(task_id))
        except ApiError as exc:
            if exc.status_code != 404:  # already gone is what we wanted
                raise

    # ------------------------------------------------------------------ demo/test helpers
    def open_tasks(self) -> list[tuple[str, int]]:
        """``(item_id, task_id)`` of connector tasks without any annotation, by priority."""
        flt = [
            dm_filter("total_annotations", "equal", "Number", 0),
            dm_filter("cancelled_annotations", "equal", "Number", 0),
        ]
        rows = [
            (int((t.data or {}).get(PRIORITY_KEY) or 0), int(t.id), str(t.data[ITEM_KEY]))
            for t in self.ls.tasks_where(flt, size=LOOKUP_PAGE, fields=LOOKUP_FIELDS)
            if ITEM_KEY in (t.data or {})
        ]
        return [(item, task_id) for _, task_id, item in sorted(rows)]

    def annotate_task(self, task_id: int, label: str) -> int:
        """Annotate a task with a class (mapped back to its choice); the annotation id."""
        choice = next((c for c, v in self._class_of().items() if v == label), label)
        config = self._label_config()
        result = [
            {
                "from_name": self.choices_name,
                "to_name": config.image_tag,
                "type": "choices",
                "value": {"choices": [choice]},
            }
        ]
        ann = self.ls.call(
            "annotate a task", self.ls.sdk.annotations.create, id=task_id, result=result
        )
        return int(ann.id or 0)

    def skip_task(self, task_id: int) -> int:
        """Skip (cancel) a task as an annotator would; the annotation id."""
        ann = self.ls.call(
            "skip a task", self.ls.sdk.annotations.create, id=task_id, result=[], was_cancelled=True
        )
        return int(ann.id or 0)


def _id_range(lo: int, hi: int) -> list[dict[str, Any]]:
    """Data Manager filters for the task ids ``lo..hi``."""
    return [dm_filter("id", "greater", "Number", lo - 1), dm_filter("id", "less", "Number", hi + 1)]


def _windows(ids: list[int], gap: int = 200) -> Iterator[tuple[int, int]]:
    """Sorted ids as ``(lo, hi)`` ranges split where they are far apart, so a query over a
    range reads few tasks the caller did not ask about."""
    if not ids:
        return
    lo = prev = ids[0]
    for task_id in ids[1:]:
        if task_id - prev > gap:
            yield lo, prev
            lo = task_id
        prev = task_id
    yield lo, prev
