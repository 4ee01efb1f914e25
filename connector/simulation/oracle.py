"""An oracle labeling backend: the ``LabelingBackend`` port answered from ground truth.

Every pushed task is labeled at once with its true class, so the round engine can run
rounds back to back on data that is already labeled (``simulate``, the demo's random
baseline). Tasks are keyed by item id, so a push is idempotent, as in Label Studio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from connector.contracts.errors import ConfigError
from connector.contracts.ports import PollResult, ProjectInfo, TaskLabelState, TaskToPush


class OracleLabeling:
    def __init__(self, truth: Mapping[str, str], classes: Sequence[str]) -> None:
        self.truth = dict(truth)
        self.classes = list(classes)
        #: item id -> (task id, when it was labeled)
        self.tasks: dict[str, tuple[int, datetime]] = {}
        self.pushed: list[TaskToPush] = []
        self.model_version: str | None = None
        # A logical clock: every label gets a distinct, increasing ``updated_at``.
        self._clock = datetime(2000, 1, 1, tzinfo=timezone.utc)

    def check_project(self, classes: Sequence[str]) -> ProjectInfo:
        return ProjectInfo(0, "oracle", "image", "label", self.classes, len(self.tasks))

    def existing_tasks(self, item_ids: Sequence[str] | None = None) -> dict[str, int]:
        ids = self.tasks if item_ids is None else [i for i in item_ids if i in self.tasks]
        return {i: self.tasks[i][0] for i in ids}

    def push(self, tasks: Sequence[TaskToPush], model_version: str) -> dict[str, int]:
        for task in tasks:
            if task.item_id in self.tasks:
                continue
            if task.item_id not in self.truth:
                raise ConfigError(f"the oracle has no label for {task.item_id!r}")
            self._clock += timedelta(milliseconds=1)
            self.tasks[task.item_id] = (len(self.tasks) + 1, self._clock)
            self.pushed.append(task)
        return self.existing_tasks([t.item_id for t in tasks])

    def set_model_version(self, model_version: str) -> None:
        self.model_version = model_version

    def withdraw_tasks(self, task_ids: Sequence[int], *, skipped_too: bool = False) -> list[int]:
        """The oracle labels every task at once: there is never one left to withdraw,
        except ids it does not know (gone already)."""
        known = {task_id for task_id, _ in self.tasks.values()}
        return [t for t in task_ids if t not in known]

    def missing_tasks(self, tasks: Mapping[int, str]) -> list[int]:
        holds = {task_id: item for item, (task_id, _) in self.tasks.items()}
        return [t for t, item in tasks.items() if holds.get(t) != item]

    def poll(self, since: datetime | None) -> PollResult:
        states = [
            TaskLabelState(task_id, item, "labeled", label=self.truth[item], annotation_id=task_id)
            for item, (task_id, at) in self.tasks.items()
            if since is None or at > since
        ]
        return PollResult(states, self._clock if self.tasks else since)
