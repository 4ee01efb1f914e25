"""An annotation whose choice is not a class raises ``label_unknown``: an alert a person
must act on, listing the items, tasks and labels, resolved once no item is invalid for
that reason (docs/alerts.md). On the fakes, then on the real Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.contracts.ports import TaskLabelState
from connector.devtools.datasets import LabeledImage
from connector.labelstudio.resolve import annotation_label
from connector.ops import alerts
from connector.settings import AlertSettings
from tests.fakes import build
from tests.fixtures.labelstudio import annotate
from tests.fixtures.s3 import upload_digits
from tests.servers import server_daemon


def _unknown(reason_label: str, task_id: int, item_id: str) -> TaskLabelState:
    _, reason = annotation_label(
        {
            "id": task_id * 10,
            "result": [{"from_name": "label", "value": {"choices": [reason_label]}}],
        },
        "label",
        {"0": "0", "1": "1"}.get,
    )
    return TaskLabelState(
        task_id=task_id,
        item_id=item_id,
        status="invalid",
        annotation_id=task_id * 10,
        reason=reason,
    )


def _open(state: Any) -> list[dict[str, Any]]:
    return [a for a in state.alerts() if a["kind"] == "label_unknown"]


def test_unknown_labels_raise_one_alert_naming_items_tasks_labels_and_the_fix(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    state, settings = engine.state, AlertSettings()
    (a, ta), (b, tb), (c, tc) = sorted((i, t.id) for i, t in labeling.tasks.items())[:3]
    state.apply_label_states([_unknown("zebra", ta, a), _unknown("it's", tb, b)])
    # an invalid item for another reason (no choice) raises nothing
    state.apply_label_states(
        [
            TaskLabelState(
                task_id=tc, item_id=c, status="invalid", reason="annotation 1 has no choice"
            )
        ]
    )
    assert alerts.detect(state, settings) == 1
    (alert,) = _open(state)
    assert alert["severity"] == "warning"
    assert alert["items"] == [a, b] and alert["tasks"] == [ta, tb]
    assert "'zebra'" in alert["message"] and '"it\'s"' in alert["message"]
    assert (
        "labels.classes" in alert["message"] and "`al-connector items show KEY`" in alert["message"]
    )
    assert alerts.detect(state, settings) == 0 and len(_open(state)) == 1  # seen again
    # one relabeled with a class: still open, for the other only
    state.apply_label_states(
        [TaskLabelState(task_id=ta, item_id=a, status="labeled", label=truth[a], annotation_id=11)]
    )
    alerts.detect(state, settings)
    (alert,) = _open(state)
    assert alert["items"] == [b] and "zebra" not in alert["message"]
    state.apply_label_states(
        [TaskLabelState(task_id=tb, item_id=b, status="labeled", label=truth[b], annotation_id=12)]
    )
    alerts.detect(state, settings)
    assert not _open(state)
    assert [
        x["resolved_at"] is not None
        for x in state.alerts(include_resolved=True)
        if x["kind"] == "label_unknown"
    ] == [True]


@pytest.mark.labelstudio
@pytest.mark.s3
def test_an_annotation_outside_the_label_set_alerts_on_real_label_studio(
    tmp_path: Path,
    label_studio: Any,
    ls_client: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=20)
    truth = {img.key: img.label for img in digits_dir[1]}
    daemon = server_daemon(
        tmp_path,
        label_studio,
        s3_server,
        s3_bucket,
        monkeypatch,
        title="alc-unknown-label",
        batch_size=5,
    )
    daemon.run_once()
    state, adapter = daemon.engine.state, daemon.engine.ports.labeling
    item, task_id = adapter.open_tasks()[0]  # type: ignore[attr-defined]
    # an annotator picks "zebra", as after someone edited the label config
    ann_id = annotate(ls_client, task_id, "zebra")
    daemon.poll()
    assert state.item(item).status == "invalid"  # type: ignore[union-attr]
    daemon.watch()
    (alert,) = _open(state)
    assert alert["items"] == [item] and alert["tasks"] == [task_id]
    assert "'zebra'" in alert["message"] and alert["severity"] == "warning"
    # the fix the message names: relabel the task with a class; the alert resolves
    choice = [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [truth[item]]},
        }
    ]
    ls_client.annotations.update(id=ann_id, result=choice)
    daemon.poll()
    daemon.watch()
    assert state.item(item).status == "labeled"  # type: ignore[union-attr]
    assert not _open(state)
