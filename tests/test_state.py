"""The state db: migrations, lifecycle transitions, idempotent ingest, frozen selections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connector.contracts.ports import ObjectInfo, TaskLabelState
from connector.state import Phase, SelectedItem, StateDB


def objs(*keys: str) -> list[ObjectInfo]:
    return [ObjectInfo(k, f"e-{k}", 10) for k in keys]


def test_migrates_and_refuses_newer_schema(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    assert db.schema_version >= 1
    db.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade al-connector"):
        StateDB(tmp_path / "s.db")


def test_discovery_is_idempotent_and_tracks_etag(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    assert db.upsert_discovered(objs("a", "b")) == 2
    assert db.upsert_discovered(objs("a", "b", "c")) == 1
    db.upsert_discovered([ObjectInfo("a", "new-etag", 11)])
    assert db.etags(["a"]) == {"a": "new-etag"}
    assert list(db.iter_candidate_ids(batch=1)) == ["a", "b", "c"]


def test_label_states_apply_once(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.upsert_discovered(objs("a"))
    db.record_push(0, {"a": 11}, {"a": "train"})
    st = TaskLabelState(task_id=11, item_id="a", status="labeled", label="cat", annotation_id=5)
    assert db.apply_label_states([st]) == {"labeled": 1}
    assert db.apply_label_states([st]) == {}, "the overlap window re-reads; nothing changes"
    updated = TaskLabelState(
        task_id=11, item_id="a", status="labeled", label="dog", annotation_id=6
    )
    assert db.apply_label_states([updated]) == {"labeled": 1}
    item = db.item("a")
    assert item is not None and item.label == "dog" and item.status == "labeled"
    assert len(db.query("SELECT * FROM label_events WHERE item_id = 'a'")) == 2


def test_freeze_selection_is_atomic_with_phase(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    rnd = db.start_round(trigger="t", plan={"strategy": "random", "params": {}, "batch_size": 2})
    sel = [
        SelectedItem(0, "a", "train", 0.9, "cat", 0.6),
        SelectedItem(1, "b", "train", 0.5, None, None),
    ]
    db.freeze_selection(rnd.round, sel)
    got = db.get_round(rnd.round)
    assert got is not None and got.phase is Phase.PUSH
    assert db.selection(rnd.round) == sel
    with pytest.raises(sqlite3.IntegrityError):
        db.freeze_selection(rnd.round, [sel[0], SelectedItem(1, "a", "train", 0.1, None, None)])
    assert db.selection(rnd.round) == sel, "a failed freeze leaves the old selection"


def test_next_round_closes_the_waiting_one(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    r0 = db.start_round(trigger="t", plan={"strategy": "random", "params": {}, "batch_size": 2})
    db.set_phase(r0.round, Phase.WAIT, metrics={"x": 1})
    db.set_phase(r0.round, Phase.WAIT, metrics={"y": 2})
    r1 = db.start_round(
        trigger="t", plan={"strategy": "entropy", "params": {"a": 1}, "batch_size": 3}
    )
    old = db.get_round(0)
    assert old is not None and old.phase is Phase.DONE and old.metrics == {"x": 1, "y": 2}
    assert r1.round == 1 and r1.params == {"a": 1}


def test_alerts_dedupe(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    assert db.add_alert("k", "key1", "m")
    assert not db.add_alert("k", "key1", "m")
    assert [r["dedupe_key"] for r in db.unsent_alerts()] == ["key1"]
