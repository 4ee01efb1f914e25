"""A push cut off inside an import waits for that import to land (connector.rounds.inflight).

Driven with the in-memory fakes: the "late" import is one whose tasks the fake Label
Studio commits only after the call that posted them has failed, as Label Studio does for
a client killed while its SQLite retry sleeps (docs/reliability.md).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.contracts.ports import TaskToPush
from connector.rounds import inflight
from connector.state import Phase, iso, utcnow
from tests.fakes import FakeLabeling, build


class Killed(BaseException):
    """SIGKILL inside a push: nothing of the process runs after it (no ``except
    Exception`` sees it), so the in-flight mark stays."""


def _break_push(
    labeling: FakeLabeling, error: BaseException, *, call: int = 1, lands: bool = False
) -> list[tuple[list[TaskToPush], str]]:
    """Push call number ``call`` raises ``error``; its tasks are imported first when the
    import ``lands``, else kept aside (returned: a request still running on the server,
    for the test to commit later). Every other call goes through."""
    real = labeling.push
    kept: list[tuple[list[TaskToPush], str]] = []
    calls = 0

    def push(tasks: Any, version: str) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls != call:
            return real(tasks, version)
        if lands:
            real(tasks, version)
        else:
            kept.append((list(tasks), version))
        raise error

    labeling.push = push  # type: ignore[method-assign]
    return kept


def _cut_off_first_import(labeling: FakeLabeling) -> list[tuple[list[TaskToPush], str]]:
    """The first push call dies mid-request, before its import commits."""
    return _break_push(labeling, Killed("the client died inside the import request"))


def _time_passes(engine: Any) -> None:
    """The deferred PUSH is due (rather than sleeping ``inflight.RECHECK_S``)."""
    engine.state.defer_phase(0, iso(utcnow() - timedelta(seconds=1)))


def test_a_late_import_is_adopted_not_imported_twice(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(
        tmp_path, objects, label_studio={"import_chunk_size": 5, "import_settle_seconds": 60}
    )
    late = _cut_off_first_import(labeling)
    with pytest.raises(Killed):
        engine.step()
    assert late and not labeling.tasks
    chunk = [t.item_id for t in late[0][0]]

    rnd = engine.step()  # the import may still land: PUSH waits, no new import
    assert rnd is not None and rnd.phase is Phase.PUSH and rnd.attempts == 0
    assert rnd.retry_at is not None and not labeling.tasks
    _time_passes(engine)
    rnd = engine.step()  # still not there: still waiting
    assert rnd is not None and rnd.phase is Phase.PUSH and not labeling.tasks

    tasks, version = late[0]  # the server commits the dead client's request
    landed = FakeLabeling.push(labeling, tasks, version)
    calls = labeling.import_calls
    _time_passes(engine)
    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.WAIT
    # The landed tasks are the items' tasks; nothing was imported twice.
    assert {i: engine.state.item(i).task_id for i in chunk} == landed  # type: ignore[union-attr]
    assert len(labeling.tasks) == engine.state.batch_progress(0)[1]
    assert labeling.import_calls > calls  # the rest of the batch was imported
    assert engine.state.get_meta(inflight.META_KEY) == ""


def test_after_the_window_the_items_are_imported_again(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(
        tmp_path, objects, label_studio={"import_chunk_size": 5, "import_settle_seconds": 0}
    )
    late = _cut_off_first_import(labeling)
    with pytest.raises(Killed):
        engine.step()
    rnd = engine.step()  # nothing to wait for: the import never reached the server
    assert rnd is not None and rnd.phase is Phase.WAIT
    chunk = [t.item_id for t in late[0][0]]
    assert all(i in labeling.tasks for i in chunk)
    assert len(labeling.tasks) == engine.state.batch_progress(0)[1]


def test_a_push_that_failed_while_the_process_lived_does_not_wait(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(tmp_path, objects, label_studio={"import_chunk_size": 5})
    _break_push(labeling, ConnectionError("Label Studio went away"))
    rnd = engine.step()  # a failure the process lived through: the adapter reconciled
    assert rnd is not None and rnd.phase is Phase.PUSH and rnd.attempts == 1
    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.WAIT and rnd.retry_at is None
    assert engine.state.get_meta(inflight.META_KEY) == ""


def test_a_landed_import_annotated_before_it_was_recorded_is_recorded_not_refused(
    tmp_path: Path, digit_objects: Any
) -> None:
    """The import landed, the daemon died before recording it, an annotator labeled the
    tasks, and the restarted daemon's poll ingested those labels before PUSH resumed."""
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects, label_studio={"import_chunk_size": 5})
    killed = Killed("killed after the import landed, before it was recorded")
    _break_push(labeling, killed, call=2, lands=True)
    with pytest.raises(Killed):
        engine.step()
    landed = [i for i, t in labeling.tasks.items() if engine.state.item(i).task_id is None]  # type: ignore[union-attr]
    assert len(landed) == 5
    for item in landed:
        labeling.annotate(item, "labeled", truth[item])
    engine.poll_labels()
    assert all(engine.state.item(i).status == "labeled" for i in landed)  # type: ignore[union-attr]

    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.WAIT
    recorded = {r["item_id"]: r["task_id"] for r in engine.state.query("SELECT * FROM pushes")}
    assert all(recorded[i] == labeling.tasks[i].id for i in landed)
    assert not engine.state.query("SELECT * FROM alerts WHERE kind = 'item_requeued'")
    assert engine.state.snapshot_labels(1) >= len(landed)  # every label has its split
