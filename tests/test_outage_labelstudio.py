"""Label Studio stopped mid-round and back on the same data: annotations made while the
connector could not reach it are all ingested, once each, and the rounds go on by
themselves with nothing pushed twice and no round FAILED.

Label Studio is "stopped" for the connector by closing the TCP relay it talks through
(``tests.test_alerts_servers.Relay``); annotators keep working on the server itself, as
they would when only the connector's network path is down. The poll's re-read window
(``polling.overlap_seconds``) is short here and the outage outlasts it, so a watermark
that moved during the outage would show as a lost annotation. (The race between two
polls that lost one in issue 13's runs is replayed deterministically in test_ingest.py.)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from connector.devtools.datasets import LabeledImage
from connector.labelstudio.adapter import LabelStudioAdapter
from connector.state import Phase
from tests.fixtures.s3 import upload_digits
from tests.servers import server_daemon
from tests.test_alerts_servers import Relay

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow]

OVERLAP_S = 1.0


def _label_events(state: Any, item: str) -> int:
    history = state.item_history(item)
    return sum(1 for e in history["events"] if e["status"] == "labeled")


def test_label_studio_outage_mid_round_loses_and_doubles_nothing(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=60)
    truth = {img.key: img.label for img in digits_dir[1]}
    host, port = label_studio.url.split("//")[1].split(":")
    relay = Relay((host, int(port)))
    relay.start()
    extra = (
        "[rounds]\nretry_backoff_seconds = 0.5\nmin_labeled_fraction = 1.0\n"
        f"[polling]\noverlap_seconds = {OVERLAP_S}\n"
    )
    daemon = server_daemon(
        tmp_path,
        label_studio,
        s3_server,
        s3_bucket,
        monkeypatch,
        title="alc-outage",
        batch_size=10,
        extra=extra,
        ls_url=f"http://127.0.0.1:{relay.port}",
    )
    state = daemon.engine.state
    through_relay: Any = daemon.engine.ports.labeling
    # the annotators' side: the server itself, not the connector's path to it
    annotators = LabelStudioAdapter(
        label_studio.url, label_studio.legacy_token, through_relay.project_id
    )
    try:
        daemon.run_once()
        open_tasks = annotators.open_tasks()
        assert len(open_tasks) == 20  # round 0: the validation split's 10, then 10 more
        before, during = open_tasks[:8], open_tasks[8:]
        for item, task_id in before:
            annotators.annotate_task(task_id, truth[item])
        daemon.poll()

        relay.stop()
        for item, task_id in during:  # annotated while the connector cannot see them
            annotators.annotate_task(task_id, truth[item])
        time.sleep(OVERLAP_S + 0.5)  # the watermark could now pass them
        for _ in range(3):  # every job keeps failing, none gives up or FAILs the round
            with contextlib.suppress(Exception):
                daemon.poll()
            with contextlib.suppress(Exception):
                daemon.round_step()
            daemon.watch()
        assert state.current_round().phase is Phase.WAIT  # type: ignore[union-attr]

        relay.start()
        back = time.monotonic()
        while time.monotonic() - back < 120:
            with contextlib.suppress(Exception):
                daemon.run_once()
            rnd = state.current_round()
            if rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT:
                break
            time.sleep(0.5)
        recovery = time.monotonic() - back
        print(f"\nLabel Studio outage: round 1 pushed {recovery:.1f} s after it came back")

        rnd = state.current_round()
        assert rnd is not None and (rnd.round, rnd.phase) == (1, Phase.WAIT)
        assert all(r.phase is not Phase.FAILED for r in state.rounds())
        for item, _ in open_tasks:  # every annotation ingested, exactly once
            assert state.item(item).status == "labeled", item  # type: ignore[union-attr]
            assert _label_events(state, item) == 1, item
        tasks = annotators.ls.lookup([item for item, _ in open_tasks])
        assert all(len(ids) == 1 for ids in tasks.values())  # nothing pushed twice
        assert state.batch_progress(1)[1] == 10
        assert not [a for a in state.alerts() if a["kind"] == "service_unreachable"]
    finally:
        relay.stop()


def test_a_late_second_task_of_an_item_is_withdrawn_or_taken_never_counted_twice(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a push killed mid-import leaves when Label Studio commits the dead client's
    import after the restarted push imported the same items again (found by
    tests/test_fault_injection.py): two tasks with one ``al_item_id``."""
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=40)
    truth = {img.key: img.label for img in digits_dir[1]}
    engine = server_daemon(
        tmp_path, label_studio, s3_server, s3_bucket, monkeypatch, title="alc-late", batch_size=10
    ).engine
    adapter: Any = engine.ports.labeling
    engine.step()
    (open_item, recorded), (taken_item, taken_recorded) = adapter.open_tasks()[-2:]

    def late_copy(item: str) -> int:
        ids, _ = adapter.ls.import_tasks(
            [{"data": {"image": f"s3://{s3_bucket}/{item}", "al_item_id": item}}], 30
        )
        return int(ids[0])

    late_open, late_taken = late_copy(open_item), late_copy(taken_item)
    assert sorted(len(t) for t in adapter.ls.lookup([open_item, taken_item]).values()) == [2, 2]
    # an annotator labels the late copy of one item; the other copy stays open
    adapter.annotate_task(late_taken, truth[taken_item])
    for _ in range(3):  # the same reads again and again change nothing more
        engine.poll_labels()

    tasks = adapter.ls.lookup([open_item, taken_item])
    assert tasks[open_item] == [recorded]  # the open second task was withdrawn
    assert tasks[taken_item] == [late_taken]  # the annotated one is the item's task now
    opened, taken = engine.state.item(open_item), engine.state.item(taken_item)
    assert opened.status == "queued" and opened.task_id == recorded  # type: ignore[union-attr]
    assert taken.status == "labeled" and taken.task_id == late_taken  # type: ignore[union-attr]
    assert taken.label == truth[taken_item]  # type: ignore[union-attr]
    history = engine.state.item_history(taken_item)
    assert history is not None
    assert [e["status"] for e in history["events"]].count("labeled") == 1
    assert late_open not in tasks[open_item] and taken_recorded not in tasks[taken_item]
