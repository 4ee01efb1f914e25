"""Ingest under concurrency: the daemon's poll job and the round job's INGEST (or WAIT)
poll run in two threads, and after a restart both start at once.

The two intermittent faults of issue 13 were one race: a poll that read a task *before*
its annotation was saved, but applied its reads *after* a newer poll had ingested the
annotation, wrote the stale state back (``queued``). If the watermark had meanwhile moved
past the annotation by more than the overlap window, nothing re-read it: the annotation
was lost (fault a). If a later poll still re-read it, the item flipped back to
``labeled`` and the same annotation was counted twice (fault b).

The interleaving is made deterministic here: the fake's poll takes its snapshot, then
(before returning it) lets the annotator work and a second poll run to completion.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from connector.contracts.ports import PollResult
from connector.rounds.engine import RoundEngine
from tests.fakes import FakeLabeling, build


class InterleavedLabeling(FakeLabeling):
    """A poll that reads, then lets ``meanwhile`` run once before it returns its reads."""

    meanwhile: Callable[[], None] | None = None

    def poll(self, since: datetime | None) -> PollResult:
        snapshot = super().poll(since)
        hook, self.meanwhile = self.meanwhile, None
        if hook is not None:
            hook()
        return snapshot


def setup(tmp_path: Path, digit_objects: Any) -> tuple[RoundEngine, InterleavedLabeling, str]:
    objects, _ = digit_objects
    engine, _, _ = build(tmp_path, objects, polling={"overlap_seconds": 2.0})
    labeling = InterleavedLabeling(engine.classes)
    engine.ports.labeling = labeling
    engine.ctx.ports.labeling = labeling
    engine.step()  # cold start: tasks pushed, one tick of the fake's clock each
    engine.poll_labels()
    # The last pushed task sits inside the next poll's overlap window: that poll reads it.
    newest = max(labeling.tasks.values(), key=lambda t: t.updated_at).item_id
    return engine, labeling, newest


def labeled_events(engine: RoundEngine) -> Counter[tuple[str, int]]:
    rows = engine.state.query(
        "SELECT item_id, annotation_id FROM label_events WHERE status = 'labeled'"
    )
    return Counter((r["item_id"], r["annotation_id"]) for r in rows)


def test_a_stale_poll_never_loses_an_annotation(tmp_path: Path, digit_objects: Any) -> None:
    """Fault (a): the annotation made while a slow poll was out stays ingested."""
    engine, labeling, item = setup(tmp_path, digit_objects)
    others = [i for i in sorted(labeling.tasks) if i != item][:5]

    def annotator_and_newer_polls() -> None:
        labeling.annotate(item, "labeled", "3")
        engine.poll_labels()  # a newer poll ingests it
        for other in others:  # the annotator goes on past the overlap window
            labeling.annotate(other, "labeled", "4")
        engine.poll_labels()

    labeling.meanwhile = annotator_and_newer_polls
    engine.poll_labels()  # the slow poll: read before the annotation, applied after
    engine.poll_labels()  # later polls start past the overlap window
    stored = engine.state.item(item)
    assert stored is not None and (stored.status, stored.label) == ("labeled", "3")


def test_a_stale_poll_never_counts_an_annotation_twice(tmp_path: Path, digit_objects: Any) -> None:
    """Fault (b): no labeled -> queued -> labeled flap, so one history row per annotation."""
    engine, labeling, item = setup(tmp_path, digit_objects)

    def annotator_and_newer_poll() -> None:
        labeling.annotate(item, "labeled", "3")
        engine.poll_labels()

    labeling.meanwhile = annotator_and_newer_poll
    engine.poll_labels()
    engine.poll_labels()  # re-reads the overlap window
    events = labeled_events(engine)
    assert events == Counter({(item, 1): 1}), events
    history = engine.state.query(
        "SELECT status FROM label_events WHERE item_id = ? ORDER BY id", (item,)
    )
    assert [r["status"] for r in history][-1] == "labeled"


def test_the_watermark_is_committed_with_the_states(tmp_path: Path, digit_objects: Any) -> None:
    """A crash while the watermark is written takes the states with it (one transaction),
    so the next poll applies them exactly once."""
    engine, labeling, item = setup(tmp_path, digit_objects)
    labeling.annotate(item, "labeled", "3")
    before = engine.state.get_meta("ls_watermark")
    set_meta = engine.state.set_meta

    def killed_at_the_watermark(key: str, value: str, conn: Any = None) -> None:
        if key == "ls_watermark":
            raise RuntimeError("killed mid-ingest")
        set_meta(key, value, conn)

    engine.state.set_meta = killed_at_the_watermark  # type: ignore[method-assign]
    with contextlib.suppress(RuntimeError):
        engine.poll_labels()
    engine.state.set_meta = set_meta  # type: ignore[method-assign]
    assert engine.state.get_meta("ls_watermark") == before
    stored = engine.state.item(item)
    assert stored is not None and stored.status == "queued", "rolled back with the watermark"
    engine.poll_labels()
    engine.poll_labels()
    assert labeled_events(engine) == Counter({(item, 1): 1})
