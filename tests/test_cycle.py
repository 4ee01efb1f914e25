"""The round state machine, driven with in-memory fakes (fast, fault injection)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from connector.devtools.datasets import DIGIT_CLASSES
from connector.state import Phase
from connector.state.schema import parse_iso
from tests.fakes import build, label_all


def test_rounds_push_unique_items_and_learn(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    rnd = engine.step()
    assert rnd is not None and rnd.round == 0 and rnd.phase is Phase.WAIT
    splits = [t.task.split for t in labeling.tasks.values()]
    assert splits.count("validation") == 30 and splits.count("train") == 20
    # Validation first: priorities 0..29 belong to the validation split.
    assert all(
        t.task.priority < 30 for t in labeling.tasks.values() if t.task.split == "validation"
    )
    accuracies = []
    for expected in range(1, 4):
        label_all(labeling, truth, skip_every=7)
        rnd = engine.step()
        assert rnd is not None and rnd.round == expected and rnd.phase is Phase.WAIT
        accuracies.append(rnd.metrics["validation"]["accuracy"])
        assert labeling.model_version == rnd.model_version
        assert rnd.model_version.startswith(f"al-r{expected:04d}-random-")
        new = [t for t in labeling.tasks.values() if t.task.round == expected]
        assert len(new) == 20
        assert all(t.task.predicted_label in DIGIT_CLASSES for t in new)
        assert sorted(t.task.priority for t in new) == list(range(20))
        rdir = tmp_path / "state" / "rounds" / f"{expected:04d}"
        assert {"model.pt", "selection.json", "diagnostics.json", "metrics.json", "report.md"} <= {
            p.name for p in rdir.iterdir()
        }
    # Every pushed item is unique (a task per item, tasks keyed by item id).
    assert len(labeling.tasks) == 50 + 3 * 20
    # Labels in the state db match the annotations, skips are kept as skips.
    for item, task in labeling.tasks.items():
        stored = engine.state.item(item)
        assert stored is not None
        assert stored.status == ("queued" if task.status == "unlabeled" else task.status)
        assert stored.label == task.label
    assert accuracies[-1] > 0.5  # 10 classes: chance is 0.1


def test_no_round_until_enough_of_the_batch_is_labeled(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects, rounds={"min_labeled_fraction": 0.8})
    engine.step()
    items = sorted(labeling.tasks)
    for item in items[: int(0.5 * len(items))]:
        labeling.annotate(item, "labeled", truth[item])
    rnd = engine.step()
    assert rnd is not None and rnd.round == 0, "half the batch must not start a round"
    engine.poll_labels()
    assert engine.next_round_trigger(engine.state.current_round()) is None
    for item in items[int(0.5 * len(items)) :]:
        labeling.annotate(item, "labeled", truth[item])
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and learner.fits == 1


def test_crash_mid_push_never_duplicates(tmp_path: Path, digit_objects: Any) -> None:
    objects, _truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects, label_studio={"import_chunk_size": 10})
    labeling.fail_after_import = 15  # dies inside the second chunk
    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.PUSH and rnd.attempts == 1
    assert rnd.error is not None and "simulated crash mid-import" in rnd.error
    frozen = engine.state.selection(0)
    # A restart (new engine, same db) resumes the push without re-selecting.
    engine2, _, _ = build(tmp_path, objects, label_studio={"import_chunk_size": 10})
    engine2.ports.labeling = labeling
    rnd = engine2.step()
    assert rnd is not None and rnd.phase is Phase.WAIT
    assert engine2.state.selection(0) == frozen
    assert len(labeling.tasks) == 50
    assert {t.id for t in labeling.tasks.values()} == set(range(1, 51))


def test_frozen_selection_is_not_rescored_after_restart(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    label_all(labeling, truth)
    labeling.fail_after_import = 0
    failed = engine.step()
    assert failed is not None and failed.phase is Phase.PUSH and failed.attempts == 1
    engine2, _, learner2 = build(tmp_path, objects)
    engine2.ports.labeling = labeling
    calls: list[int] = []
    original = learner2.score
    learner2.score = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    rnd = engine2.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT
    assert calls == [] and learner2.fits == 0


def test_labels_arriving_during_training_are_kept_once(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects)
    engine.step()
    items = sorted(labeling.tasks)
    for item in items[:-5]:
        labeling.annotate(item, "labeled", truth[item])
    late = items[-5:]
    fit = learner.fit

    def fit_while_annotating(*args: Any, **kwargs: Any) -> Any:
        for item in late:  # the annotator keeps working while the model trains
            labeling.annotate(item, "labeled", truth[item])
        engine.poll_labels()  # the poll job runs concurrently with the round job
        return fit(*args, **kwargs)

    learner.fit = fit_while_annotating  # type: ignore[method-assign]
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1
    snapshot = {
        r["item_id"] for r in engine.state.query("SELECT item_id FROM round_labels WHERE round = 1")
    }
    assert not snapshot & set(late), "labels after the snapshot belong to the next round"
    for item in late:
        stored = engine.state.item(item)
        assert stored is not None and stored.status == "labeled" and stored.label == truth[item]
    events = engine.state.query(
        "SELECT item_id, COUNT(*) AS n FROM label_events GROUP BY item_id HAVING n > 1"
    )
    assert events == []
    assert engine.state.labels_since(1) == 5


def test_corrupt_pool_item_is_quarantined_not_fatal(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    broken = dict(objects)
    broken["zz-broken.png"] = b"this is not a png"
    broken["zz-empty.png"] = b""
    engine, labeling, _ = build(
        tmp_path, broken, strategy={"batch_size": 300 - 50, "name": "random"}
    )
    engine.step()
    label_all(labeling, truth)
    engine.step()
    for key in ("zz-broken.png", "zz-empty.png"):
        item = engine.state.item(key)
        assert item is not None and item.status in ("corrupt", "discovered", "queued")
    statuses = {engine.state.item(k).status for k in ("zz-broken.png", "zz-empty.png")}  # type: ignore[union-attr]
    assert statuses == {"corrupt"}


def test_unknown_label_is_invalid_and_withdrawn_label_requeues(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    a, b = sorted(labeling.tasks)[:2]
    labeling.annotate(a, "invalid")
    labeling.annotate(b, "labeled", truth[b])
    engine.poll_labels()
    assert engine.state.item(a).status == "invalid"  # type: ignore[union-attr]
    labeling.annotate(b, "unlabeled")
    engine.poll_labels()
    stored = engine.state.item(b)
    assert stored is not None and stored.status == "queued" and stored.label is None


def test_idle_polls_never_move_the_watermark_back(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    item = sorted(labeling.tasks)[0]
    labeling.annotate(item, "labeled", truth[item])
    engine.poll_labels()
    mark = engine.state.get_meta("ls_watermark")
    for _ in range(3):
        engine.poll_labels()  # nothing changed: the fake answers with the overlapped since
    assert engine.state.get_meta("ls_watermark") == mark


def test_polls_reread_the_overlap_window_before_the_watermark(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    first, late = sorted(labeling.tasks)[:2]
    labeling.annotate(first, "labeled", truth[first])
    engine.poll_labels()
    mark = parse_iso(engine.state.get_meta("ls_watermark"))
    assert mark is not None
    seen: list[Any] = []
    poll = labeling.poll
    labeling.poll = lambda since: seen.append(since) or poll(since)  # type: ignore[method-assign]
    # A commit that lands after that poll but carries an earlier updated_at (a transaction
    # that started before it): inside the overlap window, so the next poll still sees it.
    labeling.annotate(late, "labeled", truth[late])
    labeling.tasks[late].updated_at = mark - timedelta(seconds=10)
    engine.poll_labels()
    overlap = timedelta(seconds=engine.settings.polling.overlap_seconds)
    assert seen == [mark - overlap]
    stored = engine.state.item(late)
    assert stored is not None and stored.status == "labeled" and stored.label == truth[late]
    assert parse_iso(engine.state.get_meta("ls_watermark")) == mark  # never moved back
