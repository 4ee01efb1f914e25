"""Resolving a task's annotations into one ``TaskLabelState`` (pure, no I/O).

Rules (see docs/labelstudio.md):

- Finished annotations (``was_cancelled`` false) decide. Which one, when there are
  several, is the ``rule``:

  - ``ground_truth_then_latest`` (default): ground-truth annotations first, then the most
    recently updated (``updated_at``, ties by the larger id). That one annotation decides,
    even if it is invalid: a reviewer's latest word is never silently replaced by an
    older, different one.
  - ``latest``: the most recently updated, ground truth or not.
  - ``majority``: the label chosen by most valid annotations; ties go to the label of the
    annotation ``ground_truth_then_latest`` prefers. Invalid annotations do not vote; if
    none is valid, the preferred one's reason is reported.

- No finished annotation but a cancelled one: ``skipped`` (a skip is never a label).
- No annotation at all (e.g. deleted): ``unlabeled``, which withdraws an earlier label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from connector.contracts.ports import TaskLabelState

#: How an invalid item's reason starts when its choice is not a class: the watch's
#: ``label_unknown`` alert finds those items by it (``ops.alerts``).
UNKNOWN_LABEL = "unknown label"

Rule = Literal["ground_truth_then_latest", "latest", "majority"]
RULES: tuple[Rule, ...] = ("ground_truth_then_latest", "latest", "majority")


def _updated_key(ann: Mapping[str, Any]) -> tuple[str, int]:
    # ISO-8601 UTC strings of one server sort chronologically as strings.
    return (str(ann.get("updated_at") or ann.get("created_at") or ""), int(ann.get("id") or 0))


def _preference(ann: Mapping[str, Any]) -> tuple[bool, str, int]:
    return (bool(ann.get("ground_truth")), *_updated_key(ann))


def _annotator(ann: Mapping[str, Any]) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def annotation_label(
    ann: Mapping[str, Any], choices_name: str, to_class: Callable[[str], str | None]
) -> tuple[str | None, str | None]:
    """``(class, None)`` for a usable annotation, else ``(None, reason naming the fix)``."""
    values: list[str] = []
    for region in ann.get("result") or []:
        if not isinstance(region, Mapping) or region.get("from_name") != choices_name:
            continue
        value = region.get("value") or {}
        values.extend(str(v) for v in (value.get("choices") or []))
    aid = ann.get("id")
    if not values:
        return None, (
            f"annotation {aid} has no choice in {choices_name!r}; open the task in Label "
            "Studio and pick a class (or skip it)"
        )
    if len(set(values)) > 1:
        return None, (
            f"annotation {aid} chose several classes ({', '.join(sorted(set(values)))}); "
            "keep exactly one"
        )
    cls = to_class(values[0])
    if cls is None:
        return None, (
            f"{UNKNOWN_LABEL} {values[0]!r} in annotation {aid}: not in labels.classes nor "
            "mapped in [labels] map; add it there (and to the project's label config), or "
            "relabel the task"
        )
    return cls, None


def resolve_task(
    task_id: int,
    item_id: str,
    annotations: Sequence[Mapping[str, Any]],
    *,
    choices_name: str,
    to_class: Callable[[str], str | None],
    rule: Rule = "ground_truth_then_latest",
    task_updated_at: str | None = None,
) -> TaskLabelState:
    """The current label state of one task from all its annotations (see module doc)."""
    finished = [a for a in annotations if not a.get("was_cancelled")]
    cancelled = [a for a in annotations if a.get("was_cancelled")]
    base = {"task_id": task_id, "item_id": item_id, "task_updated_at": task_updated_at}
    if not finished:
        if cancelled:
            last = max(cancelled, key=_updated_key)
            return TaskLabelState(
                status="skipped",
                annotation_id=last.get("id"),
                annotation_updated_at=last.get("updated_at"),
                annotator=_annotator(last),
                **base,  # type: ignore[arg-type]
            )
        return TaskLabelState(status="unlabeled", **base)  # type: ignore[arg-type]

    key = _updated_key if rule == "latest" else _preference
    ordered = sorted(finished, key=key, reverse=True)
    chosen = ordered[0]
    label, reason = annotation_label(chosen, choices_name, to_class)
    if rule == "majority":
        votes = [(a, *annotation_label(a, choices_name, to_class)) for a in ordered]
        valid = [(a, lab) for a, lab, _ in votes if lab is not None]
        if valid:
            counts = Counter(lab for _, lab in valid)
            top = max(counts.values())
            # ``ordered`` is in preference order, so the first tied label wins the tie.
            chosen, label = next((a, lab) for a, lab in valid if counts[lab] == top)
            reason = None
    if label is None:
        return TaskLabelState(
            status="invalid",
            annotation_id=chosen.get("id"),
            annotation_updated_at=chosen.get("updated_at"),
            annotator=_annotator(chosen),
            reason=reason,
            **base,  # type: ignore[arg-type]
        )
    return TaskLabelState(
        status="labeled",
        label=label,
        annotation_id=chosen.get("id"),
        annotation_updated_at=chosen.get("updated_at"),
        annotator=_annotator(chosen),
        **base,  # type: ignore[arg-type]
    )
