"""The Label Studio adapter (``LabelingBackend``): with the other ``connector.labelstudio``
modules, the only code that talks to Label Studio and imports ``label_studio_sdk``.

- Polling is incremental: the tasks list API with a Data Manager filter on the task's
  ``updated_at`` (which Label Studio bumps when an annotation is created, updated or
  deleted), keyset-paginated, with annotations in the same response. Its cost follows
  what changed, not the project's size.
- Imports are idempotent: reconcile by ``al_item_id`` first, SDK retries off, and a chunk
  whose outcome is unknown is reconciled again before it is retried (and de-duplicated
  after), so a crash or timeout mid-import never leaves an item with two tasks.
- Every call goes through the shared retry policy (``connector.retry``); 4xx are never
  retried and become ``AuthError`` / ``ConfigError`` / ``ConnectorError`` naming the fix.

See docs/labelstudio.md for the task schema, score encoding and the annotation rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from label_studio_sdk.core.api_error import ApiError

from connector.contracts.errors import ConfigError, ConnectorError
from connector.contracts.ports import PollResult, ProjectInfo, TaskLabelState, TaskToPush
from connector.labelstudio.admin import LabelStudioAdminMixin
from connector.labelstudio.client import (
    LOOKUP_FIELDS,
    LOOKUP_PAGE,
    LabelStudioClient,
    api_detail,
    create_personal_access_token,
)
from connector.labelstudio.config import LabelConfigInfo, check_classes, parse_label_config
from connector.labelstudio.query import (
    ITEM_KEY,
    as_utc,
    dm_datetime,
    parse_ls_datetime,
    task_payload,
)
from connector.labelstudio.queue import SEQUENTIAL_SAMPLING, LabelStudioQueueMixin
from connector.labelstudio.resolve import RULES, Rule, resolve_task

__all__ = [
    "LabelStudioAdapter",
    "create_personal_access_token",
]

log = logging.getLogger(__name__)


class LabelStudioAdapter(LabelStudioAdminMixin, LabelStudioQueueMixin):
    """``LabelingBackend`` on one Label Studio project (see ``connector.contracts.ports``).

    Args:
        url: base URL of Label Studio, e.g. ``http://localhost:8080``.
        token: a legacy API token or a personal access token (a JWT refresh token); the
            kind is detected (the SDK exchanges a PAT for short-lived access tokens).
        project_id: the project fed by the connector.
        image_field: task data key of the image URL (the Image tag's ``value="$..."``).
        choices_name: ``name`` of the Choices control holding the class.
        label_map: Label Studio choice value -> class name; identity for unmapped choices.
        classes: the model's classes; annotations choosing anything else are invalid.
            ``check_project(classes)`` sets them too. Unset: every mapped choice is a class.
        multi_annotation: how several annotations on one task resolve (see
            ``connector.labelstudio.resolve``).
        import_chunk_size: tasks per import call.
        page_size: tasks per page when polling.
        timeout_s / import_timeout_s: HTTP timeouts of ordinary calls / of one import.
        retry_attempts / retry_max_wait_s: the transient-error retry policy's bounds.
    """

    def __init__(
        self,
        url: str,
        token: str,
        project_id: int,
        *,
        image_field: str = "image",
        choices_name: str = "label",
        label_map: Mapping[str, str] | None = None,
        classes: Sequence[str] | None = None,
        multi_annotation: Rule = "ground_truth_then_latest",
        import_chunk_size: int = 500,
        page_size: int = 100,
        timeout_s: float = 30.0,
        import_timeout_s: float = 300.0,
        retry_attempts: int = 5,
        retry_max_wait_s: float = 20.0,
        ca_bundle: str | None = None,
    ) -> None:
        if multi_annotation not in RULES:
            raise ConfigError(
                f"multi_annotation {multi_annotation!r} is unknown; use one of {', '.join(RULES)}"
            )
        if import_chunk_size < 1 or page_size < 1:
            raise ValueError("import_chunk_size and page_size must be >= 1")
        self.url = url.rstrip("/")
        self.project_id = int(project_id)
        self.image_field = image_field
        self.choices_name = choices_name
        self.label_map: dict[str, str] = dict(label_map or {})
        self.classes: list[str] | None = list(classes) if classes else None
        self.multi_annotation: Rule = multi_annotation
        self.import_chunk_size = import_chunk_size
        self.page_size = page_size
        self.import_timeout_s = import_timeout_s
        self.ls = LabelStudioClient(
            url,
            token,
            project_id,
            timeout_s=timeout_s,
            retry_attempts=retry_attempts,
            retry_max_wait_s=retry_max_wait_s,
            ca_bundle=ca_bundle,
        )
        self._config: LabelConfigInfo | None = None
        self._to_class: dict[str, str] | None = None
        self._pending_model_version: str | None = None
        self._predictions_short = False

    def __repr__(self) -> str:  # never the token
        return f"LabelStudioAdapter(url={self.url!r}, project_id={self.project_id})"

    # ------------------------------------------------------------------ projects
    @classmethod
    def create_project(
        cls, url: str, token: str, title: str, label_config: str, **kwargs: Any
    ) -> int:
        """Create a project for the connector (sequential sampling, predictions shown)."""
        adapter = cls(url, token, 0, **kwargs)
        project = adapter.ls.call(
            "create a project",
            adapter.ls.sdk.projects.create,
            title=title,
            label_config=label_config,
            sampling=SEQUENTIAL_SAMPLING,
            show_collab_predictions=True,
        )
        log.info("created Label Studio project %d (%s)", project.id, title)
        return int(project.id or 0)

    @classmethod
    def find_or_create_project(
        cls, url: str, token: str, title: str, label_config: str, **kwargs: Any
    ) -> int:
        """The id of the one project titled ``title``, created if there is none."""
        adapter = cls(url, token, 0, **kwargs)
        pager: Any = adapter.ls.call(
            "list projects", adapter.ls.sdk.projects.list, title=title, page_size=100
        )
        matches = [int(p.id or 0) for p in (pager.items or []) if p.title == title]
        if len(matches) > 1:
            raise ConfigError(
                f"{len(matches)} Label Studio projects are titled {title!r} (ids "
                f"{', '.join(map(str, sorted(matches)))}); set label_studio.project_id"
            )
        if matches:
            return matches[0]
        return cls.create_project(url, token, title, label_config, **kwargs)

    def _project(self) -> Any:
        return self.ls.project()

    def _label_config(self) -> LabelConfigInfo:
        if self._config is None:
            project = self._project()
            self._config = parse_label_config(
                project.label_config or "",
                image_field=self.image_field,
                choices_name=self.choices_name,
            )
        return self._config

    def _class_of(self) -> dict[str, str]:
        if self._to_class is None:
            config = self._label_config()
            self._to_class, _ = check_classes(config.choices, self.classes or [], self.label_map)
        return self._to_class

    def check_project(self, classes: Sequence[str]) -> ProjectInfo:
        """Check the label config against image_field, choices_name, classes and label map."""
        project = self._project()
        config = parse_label_config(
            project.label_config or "", image_field=self.image_field, choices_name=self.choices_name
        )
        to_class, warnings = check_classes(config.choices, classes, self.label_map)
        self._config, self._to_class = config, to_class
        if classes:
            self.classes = list(classes)
        warnings = [*config.warnings, *warnings]
        if project.sampling != SEQUENTIAL_SAMPLING:
            warnings.append(
                f"the project samples tasks by {project.sampling!r}, so annotators do not get "
                "the connector's priority order; the next push sets Settings > Annotation > "
                f"Task Sampling to {SEQUENTIAL_SAMPLING!r}"
            )
        return ProjectInfo(
            project_id=self.project_id,
            title=str(project.title or ""),
            image_field=self.image_field,
            choices_name=self.choices_name,
            choices=list(config.choices),
            task_count=int(project.task_number or 0),
            warnings=warnings,
        )

    def set_model_version(self, model_version: str) -> None:
        """Make ``model_version`` the project's, so Label Studio shows and samples it.

        Label Studio refuses a version that no prediction carries yet; then it is applied
        by the next ``push`` of that version, right after its first import.
        """
        try:
            self.ls.call(
                "set the model version",
                self.ls.sdk.projects.update,
                id=self.project_id,
                model_version=model_version,
                not_found=self.ls.project_not_found(),
            )
        except ConnectorError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, ApiError)
                and cause.status_code == 400
                and "model_version" in api_detail(cause)
            ):
                log.info(
                    "model version %s has no predictions yet; set after its push", model_version
                )
                self._pending_model_version = model_version
                return
            raise
        self._pending_model_version = None
        log.info("project %d: model version is now %s", self.project_id, model_version)

    # ------------------------------------------------------------------ listing
    def existing_tasks(self, item_ids: Sequence[str] | None = None) -> dict[str, int]:
        """``item_id -> task_id`` of connector tasks (the oldest task if duplicated)."""
        if item_ids is not None:
            return {item: min(ids) for item, ids in self.ls.lookup(item_ids).items()}
        out: dict[str, int] = {}
        for task in self.ls.tasks_where([], size=LOOKUP_PAGE, fields=LOOKUP_FIELDS):
            item = (task.data or {}).get(ITEM_KEY)
            if item is not None:
                out[str(item)] = min(int(task.id), out.get(str(item), int(task.id)))
        return out

    # ------------------------------------------------------------------ push
    def push(self, tasks: Sequence[TaskToPush], model_version: str) -> dict[str, int]:
        """Import tasks with predictions, idempotently; returns ``item_id -> task_id``."""
        if not tasks:
            return {}
        if not model_version:
            raise ValueError("model_version must not be empty")
        ids = [t.item_id for t in tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("push got the same item_id twice; each item is one task")
        self.connect_pending_storage()
        mapping = self.existing_tasks(ids)
        # Import order is queue order: Label Studio serves tasks by id (docs/labelstudio.md).
        todo = sorted((t for t in tasks if t.item_id not in mapping), key=lambda t: t.priority)
        if mapping:
            log.info(
                "push %s: %d of %d items already have tasks; importing %d",
                model_version,
                len(mapping),
                len(tasks),
                len(todo),
            )
            # An import that lost its predictions, then a crash before the repair: the
            # tasks exist, bare. Repair them now, or nobody ever will.
            done = [t for t in tasks if t.item_id in mapping]
            payload = self._payloads(done, model_version)
            self.ls.add_missing_predictions({mapping[i]: p for i, p in payload.items()})
        if todo:
            self.prepare_queue(model_version, max(t.round for t in todo))
        for start in range(0, len(todo), self.import_chunk_size):
            chunk = todo[start : start + self.import_chunk_size]
            mapping.update(self._import_chunk(chunk, model_version))
            log.info(
                "push %s: %d/%d tasks imported into project %d",
                model_version,
                min(start + len(chunk), len(todo)),
                len(todo),
                self.project_id,
            )
        if self._pending_model_version == model_version:
            self.set_model_version(model_version)
        return {i: mapping[i] for i in ids}

    def _payloads(
        self, tasks: Sequence[TaskToPush], model_version: str
    ) -> dict[str, dict[str, Any]]:
        """``item_id -> import payload`` (the task and its prediction)."""
        config = self._label_config()
        choice_for: dict[str, str] = {}
        for choice, cls in self._class_of().items():
            choice_for.setdefault(cls, choice)
        return {
            t.item_id: task_payload(
                t,
                model_version,
                image_field=self.image_field,
                choices_name=self.choices_name,
                image_tag=config.image_tag,
                choice_for=choice_for,
            )
            for t in tasks
        }

    def _import_chunk(self, chunk: Sequence[TaskToPush], model_version: str) -> dict[str, int]:
        payload = self._payloads(chunk, model_version)
        pending = [t.item_id for t in chunk]
        mapped: dict[str, int] = {}
        tries = 0
        self._predictions_short = False

        def attempt() -> None:
            nonlocal pending, tries
            tries += 1
            if tries > 1:
                # The failed call may have imported (part of) the chunk: look first.
                found = self.ls.lookup(pending, retry=False)
                mapped.update({i: min(v) for i, v in found.items()})
                pending = [i for i in pending if i not in found]
            if pending:
                mapped.update(self._import_once([payload[i] for i in pending], pending))
                pending = []

        self.ls.call("import tasks", attempt, not_found=self.ls.project_not_found())
        if tries > 1:  # an outcome was unknown: a late commit may have left duplicates
            mapped = self._dedupe([t.item_id for t in chunk])
        if tries > 1 or self._predictions_short:
            self.ls.add_missing_predictions({mapped[i]: payload[i] for i in mapped})
        return mapped

    def _import_once(self, payload: list[dict[str, Any]], item_ids: list[str]) -> dict[str, int]:
        task_ids, n_predictions = self.ls.import_tasks(payload, self.import_timeout_s)
        self._predictions_short = n_predictions is None or n_predictions < len(payload)
        if len(task_ids) == len(item_ids):  # Community imports synchronously, in order
            return dict(zip(item_ids, task_ids, strict=True))
        # An asynchronous import (Enterprise) returns no ids: read them back.
        return {i: min(v) for i, v in self.ls.lookup(item_ids, retry=False).items()}

    def _dedupe(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Keep the oldest task of every item, delete the others; ``item_id -> task_id``."""
        out: dict[str, int] = {}
        for item, task_ids in self.ls.lookup(item_ids).items():
            keep, *extra = sorted(task_ids)
            out[item] = keep
            for task_id in extra:
                log.warning(
                    "item %s had a duplicate task %d (kept %d); deleting", item, task_id, keep
                )
                self.ls.call("delete a duplicate task", self.ls.sdk.tasks.delete, id=task_id)
        return out

    # ------------------------------------------------------------------ poll
    def poll(self, since: datetime | None) -> PollResult:
        """The label state of every connector task updated after ``since`` (all if None).

        The caller owns the re-read window: the cycle passes its watermark minus
        ``polling.overlap_seconds``, so a commit that lands after a poll with an earlier
        ``updated_at`` is still seen. Re-reading is harmless (states are idempotent).
        """
        to_class = self._class_of()
        cursor = None
        if since is not None:
            cursor = dm_datetime(as_utc(since))
        latest: dict[int, Any] = {}
        for task in self.ls.changed_tasks(cursor, self.page_size):
            latest[int(task.id)] = task  # a task read twice: its later read wins
        watermark = as_utc(since) if since is not None else None
        states: list[TaskLabelState] = []
        foreign = 0
        for task_id in sorted(latest):
            task = latest[task_id]
            updated = parse_ls_datetime(task.updated_at)
            if updated is not None and (watermark is None or updated > watermark):
                watermark = updated
            item = (task.data or {}).get(ITEM_KEY)
            if item is None:
                foreign += 1
                continue
            states.append(
                resolve_task(
                    task_id,
                    str(item),
                    list(task.annotations or []),
                    choices_name=self.choices_name,
                    to_class=to_class.get,
                    rule=self.multi_annotation,
                    task_updated_at=None if updated is None else updated.isoformat(),
                )
            )
        log.debug("poll since %s: %d tasks changed, %d foreign", cursor, len(latest), foreign)
        return PollResult(states=states, watermark=watermark, foreign_tasks=foreign)
