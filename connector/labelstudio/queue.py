"""The annotators' queue: how Label Studio serves the connector's tasks, and the Data
Manager tab that shows them. Mixed into ``LabelStudioAdapter``.

Label Studio 1.23 (``projects/functions/next_task.py``) serves the labeling stream of a
project with *Sequential sampling* in the order of the Data Manager query, which is task
id when no tab orders it. The connector imports a round's tasks in priority order, so
task ids rise with priority and the stream is the round's order; the prediction score is
then free to be the model's confidence. *Uncertainty sampling* would serve the lowest
prediction score first, which forced the score to encode the queue position, and it
samples only predictions of the project's model version, so until the version switched
annotators got random tasks. See docs/labelstudio.md, "The labeling queue".
"""

from __future__ import annotations

import logging
from typing import Any, cast

from connector.labelstudio.client import LabelStudioClient
from connector.labelstudio.query import PRIORITY_KEY, ROUND_KEY

log = logging.getLogger(__name__)

SEQUENTIAL_SAMPLING = "Sequential sampling"
VIEW_TITLE = "al-connector: open tasks by priority"
_NUMBER_COLUMNS = (f"tasks:data.{PRIORITY_KEY}", f"tasks:data.{ROUND_KEY}")
_HIDDEN = [
    "tasks:inner_id",
    "tasks:annotators",
    "tasks:annotations_results",
    "tasks:annotations_ids",
    "tasks:predictions_model_versions",
    "tasks:file_upload",
    "tasks:storage_filename",
    "tasks:created_at",
    "tasks:updated_at",
    "tasks:updated_by",
    "tasks:avg_lead_time",
    "tasks:draft_exists",
]


def priority_view(round_: int) -> dict[str, Any]:
    """The tab's ``data``: open tasks of ``round_`` by priority, confidence as a column.

    ``columnsDisplayType`` makes Label Studio sort ``al_priority`` as a number (it sorts
    a data field as text otherwise: 10 before 2). ``predictions_score`` ("Prediction
    score") is the model's confidence in the prelabel.
    """

    def flt(field: str, value: int) -> dict[str, Any]:
        return {
            "filter": f"filter:tasks:{field}",
            "operator": "equal",
            "type": "Number",
            "value": value,
        }

    return {
        "title": VIEW_TITLE,
        "ordering": [f"tasks:data.{PRIORITY_KEY}"],
        "filters": {
            "conjunction": "and",
            "items": [
                flt("total_annotations", 0),
                flt("cancelled_annotations", 0),
                flt(f"data.{ROUND_KEY}", int(round_)),
            ],
        },
        "columnsDisplayType": {c: "Number" for c in _NUMBER_COLUMNS},
        "hiddenColumns": {"explore": _HIDDEN, "labeling": _HIDDEN},
    }


class LabelStudioQueueMixin:
    """Needs ``ls`` and ``project_id``."""

    ls: LabelStudioClient
    project_id: int
    _queue_ready: tuple[str, int] | None = None

    def prepare_queue(self, model_version: str, round_: int) -> None:
        """Before importing ``model_version``'s tasks: sequential sampling, and the
        project's model version cleared if it is another one.

        Label Studio refuses a model version no prediction carries, but sets an empty one
        to the version of the first imported prediction, in the import's own transaction.
        So from the first task of the round on, the labeling view shows this round's
        prelabels, with no moment where it serves or shows the previous round's.

        Done once per version and round by an adapter (a push comes in many chunks).
        """
        if self._queue_ready == (model_version, round_):
            return
        project = self.ls.project()
        update: dict[str, Any] = {}
        if project.sampling != SEQUENTIAL_SAMPLING:
            log.warning(
                "project %d sampled by %r; setting %r so annotators get the round's order",
                self.project_id,
                project.sampling,
                SEQUENTIAL_SAMPLING,
            )
            update["sampling"] = SEQUENTIAL_SAMPLING
        if (project.model_version or "") not in ("", model_version):
            update["model_version"] = ""
        if update:
            self.ls.call(
                "prepare the labeling queue",
                self.ls.sdk.projects.update,
                id=self.project_id,
                not_found=self.ls.project_not_found(),
                **update,
            )
        self.ensure_priority_view(round_)
        self._queue_ready = (model_version, round_)

    def ensure_priority_view(self, round_: int) -> int:
        """Create (or bring up to date) the tab ``VIEW_TITLE``; its id. Idempotent."""
        want = priority_view(round_)
        views = self.ls.call(
            "list Data Manager tabs", self.ls.sdk.views.list, project=self.project_id
        )
        for view in views or []:
            data = dict(view.data or {})
            if data.get("title") != VIEW_TITLE:
                continue
            if any(data.get(k) != v for k, v in want.items()):
                self.ls.call(
                    "update the Data Manager tab",
                    self.ls.sdk.views.update,
                    id=str(view.id),
                    project=self.project_id,
                    data=cast(Any, want),
                )
            return int(view.id or 0)
        view = self.ls.call(
            "create the Data Manager tab",
            self.ls.sdk.views.create,
            project=self.project_id,
            data=cast(Any, want),
        )
        log.info("project %d: Data Manager tab %r created", self.project_id, VIEW_TITLE)
        return int(view.id or 0)
