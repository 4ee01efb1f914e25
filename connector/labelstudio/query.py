"""Data Manager queries and task payloads for the Label Studio adapter (pure, no I/O).

The Data Manager filter language is what the tasks list API (``GET /api/tasks``) takes in
its ``query`` parameter. Datetime values must be ``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC: an ISO
string with ``+00:00`` makes Label Studio answer HTTP 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from connector.contracts.ports import TaskToPush

DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Task data keys the connector writes (documented in docs/labelstudio.md).
ITEM_KEY = "al_item_id"
ROUND_KEY = "al_round"
SPLIT_KEY = "al_split"
PRIORITY_KEY = "al_priority"
#: Budget for one encoded ``query`` parameter: proxies commonly cap a request line at 8 KiB.
MAX_QUERY_CHARS = 6500
#: The encoded rest of a lookup query: filter names, the id keyset, ordering.
_QUERY_OVERHEAD = 400


def as_utc(moment: datetime) -> datetime:
    """A timezone-aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def dm_datetime(moment: datetime) -> str:
    return as_utc(moment).strftime(DM_DATETIME)


def parse_ls_datetime(value: Any) -> datetime | None:
    """Label Studio's ``updated_at`` (a datetime, or an ISO string ending in Z) in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return as_utc(datetime.fromisoformat(text))


def dm_filter(field: str, operator: str, type_: str, value: Any) -> dict[str, Any]:
    return {"filter": f"filter:tasks:{field}", "operator": operator, "type": type_, "value": value}


def dm_query(filters: Sequence[dict[str, Any]], ordering: str | None = None) -> str:
    query: dict[str, Any] = {"filters": {"conjunction": "and", "items": list(filters)}}
    if ordering:
        query["ordering"] = [f"tasks:{ordering}"]
    return json.dumps(query, separators=(",", ":"))


def id_chunks(ids: Sequence[str], max_chars: int = MAX_QUERY_CHARS) -> Iterator[list[str]]:
    """Split ids so that each chunk's ``in_list`` query stays under ``max_chars`` once
    JSON-encoded and percent-encoded (counted as if every reserved character were)."""
    chunk: list[str] = []
    size = _QUERY_OVERHEAD
    for item in ids:
        cost = len(quote(json.dumps(item), safe="")) + 3  # + the encoded comma
        if chunk and size + cost > max_chars:
            yield chunk
            chunk, size = [], _QUERY_OVERHEAD
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


def task_payload(
    task: TaskToPush,
    model_version: str,
    *,
    image_field: str,
    choices_name: str,
    image_tag: str,
    choice_for: dict[str, str],
) -> dict[str, Any]:
    """One task for ``POST /api/projects/{id}/import``, with its prediction.

    The prediction carries the model's predicted class (as the Label Studio choice value);
    its ``score`` (and the region's) is the model's probability of that class, what Label
    Studio shows as the prediction score. Without a prelabel the result is empty and there
    is no score. The queue order is the import order (see docs/labelstudio.md), and
    ``al_round`` / ``al_priority`` are JSON numbers so the Data Manager can sort them.
    """
    result: list[dict[str, Any]] = []
    if task.predicted_label is not None:
        choice = choice_for.get(task.predicted_label, task.predicted_label)
        region: dict[str, Any] = {
            "from_name": choices_name,
            "to_name": image_tag,
            "type": "choices",
            "value": {"choices": [choice]},
        }
        if task.confidence is not None:
            region["score"] = float(task.confidence)
        result.append(region)
    data: dict[str, Any] = {
        image_field: task.image_url,
        ITEM_KEY: task.item_id,
        ROUND_KEY: int(task.round),
        SPLIT_KEY: task.split,
        PRIORITY_KEY: int(task.priority),
    }
    prediction: dict[str, Any] = {"model_version": model_version, "result": result}
    if result and task.confidence is not None:
        prediction["score"] = float(task.confidence)
    return {"data": data, "predictions": [prediction]}
