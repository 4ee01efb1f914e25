"""What annotators get from Label Studio: the order of the labeling stream, the prelabel
and its score, the Data Manager tab, and a prediction on every task (real server)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk import LabelStudio

from connector.contracts.ports import TaskToPush
from connector.devtools.datasets import DIGIT_CLASSES
from connector.labelstudio.queue import SEQUENTIAL_SAMPLING, VIEW_TITLE
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.state import Phase, StateDB
from connector.storage.cache import LabeledCache
from tests.fakes import MemoryStore, PixelLearner, make_settings
from tests.fixtures.labelstudio import LabelStudioHandle, LabelStudioProject, annotate


def _tasks(n: int, *, round_: int, prelabels: bool = True) -> list[TaskToPush]:
    return [
        TaskToPush(
            item_id=f"r{round_}/digit-{i:03d}.png",
            image_url=f"s3://pool/r{round_}/digit-{i:03d}.png",
            round=round_,
            split="train",
            priority=i,
            predicted_label=str(i % 10) if prelabels else None,
            confidence=round(0.31 + (i * 7 % 11) / 20, 3) if prelabels else None,
        )
        for i in range(n)
    ]


def next_task(ls: LabelStudioHandle, project_id: int) -> dict[str, Any] | None:
    """The task Label Studio's labeling stream ("Label All Tasks") serves now, as the
    labeling view asks for it; None when the stream is empty."""
    req = urllib.request.Request(
        f"{ls.url}/api/projects/{project_id}/next",
        headers={"Authorization": f"Token {ls.legacy_token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def label_stream(ls: LabelStudioHandle, client: LabelStudio, project_id: int) -> list[Any]:
    """Label the whole stream as an annotator would; the served tasks in order."""
    served = []
    while (task := next_task(ls, project_id)) is not None:
        served.append(task)
        annotate(client, int(task["id"]), "1")
    return served


def test_score_is_the_confidence_and_the_tab_sorts_priority_as_a_number(
    label_studio: LabelStudioHandle, ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    ls_client.projects.update(id=ls_project.id, sampling="Uncertainty sampling")
    adapter = ls_project.adapter(import_chunk_size=4)
    tasks = _tasks(12, round_=3)
    tasks[5] = TaskToPush(**{**tasks[5].__dict__, "predicted_label": None, "confidence": None})
    mapping = adapter.push(tasks, "r3-margin")
    for task in tasks:
        got = ls_client.tasks.get(id=str(mapping[task.item_id]))
        assert got.data["al_round"] == 3 and got.data["al_priority"] == task.priority
        (pred,) = [p if isinstance(p, dict) else p.model_dump() for p in got.predictions or []]
        if task.confidence is None:  # no prelabel: no score to show
            assert pred["result"] == [] and pred["score"] is None
        else:
            assert pred["score"] == pytest.approx(task.confidence)
            (region,) = pred["result"]
            assert region["value"] == {"choices": [task.predicted_label]}
    project = ls_client.projects.get(id=ls_project.id)
    assert project.sampling == SEQUENTIAL_SAMPLING  # set by the push
    assert project.model_version == "r3-margin"

    # One more task, by a new adapter (a restart): the tab is not made twice.
    ls_project.adapter().push(_tasks(13, round_=3), "r3-margin")
    views = [
        v for v in ls_client.views.list(project=ls_project.id) if v.data["title"] == VIEW_TITLE
    ]
    assert len(views) == 1
    data = views[0].data
    assert data["ordering"] == ["tasks:data.al_priority"]
    assert "tasks:predictions_score" not in data["hiddenColumns"]["explore"]
    req = urllib.request.Request(
        f"{label_studio.url}/api/tasks?view={views[0].id}&page_size=100&fields=task_only",
        headers={"Authorization": f"Token {label_studio.legacy_token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        listed = json.load(resp)["tasks"]
    # As numbers: 0, 1, 2, ..., 10, 11, 12 (as text, 10 would come before 2).
    assert [t["data"]["al_priority"] for t in listed] == list(range(13))


def test_the_stream_serves_the_round_in_order_from_its_first_task(
    label_studio: LabelStudioHandle, ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter(import_chunk_size=2)
    adapter.push(_tasks(3, round_=1), "r1")
    adapter.set_model_version("r1")
    assert [
        t["data"]["al_priority"] for t in label_stream(label_studio, ls_client, ls_project.id)
    ] == [0, 1, 2]

    first: list[dict[str, Any] | None] = []
    import_tasks = adapter.ls.import_tasks

    def import_then_look(*args: Any) -> Any:
        out = import_tasks(*args)
        if not first:  # right after the round's first chunk lands
            first.append(next_task(label_studio, ls_project.id))
        return out

    adapter.ls.import_tasks = import_then_look  # type: ignore[method-assign]
    tasks = _tasks(9, round_=2)
    adapter.push(list(reversed(tasks)), "r2")
    served = first + label_stream(label_studio, ls_client, ls_project.id)[1:]
    assert [(t["data"]["al_round"], t["data"]["al_priority"]) for t in served if t] == [
        (2, p) for p in range(9)
    ]
    for task in served:  # each with its prelabel shown: this round's prediction
        assert task is not None
        (pred,) = task["predictions"]
        assert pred["model_version"] == "r2"
        assert pred["score"] == pytest.approx(tasks[task["data"]["al_priority"]].confidence)


def test_a_chunk_that_met_a_locked_database_keeps_its_predictions(
    label_studio: LabelStudioHandle, ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    """Label Studio retries an import that met "database is locked" with the predictions
    already stripped from its tasks: a whole chunk landed bare (75 of 770 tasks with
    ``import_chunk_size = 5`` while annotators saved). Here a writer holds SQLite's lock
    past Label Studio's 5 s busy timeout during the second chunk."""
    adapter = ls_project.adapter(import_chunk_size=5, import_timeout_s=120)
    db = Path(label_studio.server.data_dir) / "label_studio.sqlite3"
    import_tasks = adapter.ls.import_tasks
    calls = 0

    def hold_lock(seconds: float, locked: threading.Event) -> None:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    def import_while_locked(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            locked = threading.Event()
            threading.Thread(target=hold_lock, args=(6.5, locked), daemon=True).start()
            locked.wait(10)
        return import_tasks(*args)

    adapter.ls.import_tasks = import_while_locked  # type: ignore[method-assign]
    mapping = adapter.push(_tasks(15, round_=1), "r1")
    stored = list(ls_client.tasks.list(project=ls_project.id, fields="all", page_size=100))
    assert len(stored) == len(mapping) == 15
    bare = [t.data["al_priority"] for t in stored if len(t.predictions or []) != 1]
    assert bare == [], f"tasks without their prediction: priorities {bare}"


def test_a_push_resumed_after_a_crash_gives_a_bare_chunk_its_predictions(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    """A chunk that landed without its predictions (the locked-database import above),
    then a SIGKILL before the repair: the tasks exist, bare. The restarted push finds them
    by item id; it must give them their predictions, not only skip their import."""
    tasks = _tasks(4, round_=1)
    adapter = ls_project.adapter(import_chunk_size=2)
    bare = [
        {
            "data": {
                "image": t.image_url,
                "al_item_id": t.item_id,
                "al_round": t.round,
                "al_split": t.split,
                "al_priority": t.priority,
            }
        }
        for t in tasks[:2]
    ]
    adapter.ls.import_tasks(bare, 60)  # what landed before the kill

    mapping = ls_project.adapter(import_chunk_size=2).push(tasks, "r1")  # the restart
    stored = list(ls_client.tasks.list(project=ls_project.id, fields="all", page_size=100))
    assert sorted(int(t.id) for t in stored) == sorted(mapping.values())
    for task in stored:
        (pred,) = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions or []]
        want = tasks[task.data["al_priority"]]
        assert pred["model_version"] == "r1"
        assert pred["score"] == pytest.approx(want.confidence)


def test_pushing_a_round_withdraws_earlier_rounds_open_tasks(
    tmp_path: Path,
    digit_objects: Any,
    label_studio: LabelStudioHandle,
    ls_project: LabelStudioProject,
    ls_client: LabelStudio,
) -> None:
    """Old rounds' open training tasks are withdrawn and their items go back to the pool;
    the stream serves the new round from its first task, with zero inversions."""
    objects, truth = digit_objects
    settings = make_settings(
        tmp_path,
        strategy={"name": "entropy", "batch_size": 12},
        validation={"size": 10},
        rounds={"min_labeled_fraction": 0.5, "retry_backoff_seconds": 0},
        label_studio={"import_chunk_size": 3},
    )
    adapter = ls_project.adapter(classes=list(DIGIT_CLASSES))
    state = StateDB(settings.db_path())
    ports = Ports(
        state, MemoryStore(objects), adapter, LabeledCache(settings.cache_dir(), 50_000_000)
    )
    engine = RoundEngine(settings, ports, PixelLearner(), DIGIT_CLASSES)
    first = engine.step()  # round 0: 10 validation + 12 training tasks
    assert first is not None and first.phase is Phase.WAIT
    served0 = []
    for _ in range(16):  # all validation, 6 of 12 training: the round may end
        task = next_task(label_studio, ls_project.id)
        assert task is not None
        served0.append(task)
        annotate(ls_client, int(task["id"]), truth[task["data"]["al_item_id"]])
    assert [t["data"]["al_priority"] for t in served0] == list(range(16))
    served_ids = {int(t["id"]) for t in served0}
    stale = {
        int(t.id): str(t.data["al_item_id"])
        for t in ls_client.tasks.list(project=ls_project.id, page_size=100)
        if int(t.id) not in served_ids
    }
    assert len(stale) == 6

    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT
    # Withdrawn (Label Studio on SQLite gives their ids to the next tasks: compare items).
    left = {
        t.data["al_item_id"] for t in ls_client.tasks.list(project=ls_project.id, page_size=100)
    }
    assert not set(stale.values()) & left
    for item in stale.values():  # back in the pool, for the next round to rank again
        row = state.item(item)
        assert row is not None and row.status == "discovered" and row.task_id is None
    served = label_stream(label_studio, ls_client, ls_project.id)
    assert [(t["data"]["al_round"], t["data"]["al_priority"]) for t in served] == [
        (1, p) for p in range(12)
    ]
    for task in served:  # the trained model's prelabel, its confidence as the score
        (pred,) = task["predictions"]
        assert pred["model_version"] == rnd.model_version
        assert 0.0 < pred["score"] <= 1.0
