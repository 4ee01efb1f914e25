"""Crash safety, as a test (issue 13): SIGKILL the daemon in every phase, restart it,
and check every task and annotation in Label Studio against the state db at the end.

``al-connector run`` runs as a child process against the session's real Label Studio and
S3 servers (tests/fixtures), on a small pool with small batches and a tiny import chunk,
so a push is many requests. The killer reads the running phase from the state db and
sends SIGKILL once the phase it wants is running (a random few ms in, so a kill in PUSH
lands inside an import request), never twice in a row in the same phase; after each
kill the daemon starts again. Meanwhile an annotator thread labels (and now and then
skips) open tasks through the Label Studio API from ground truth.

At the end (one last, graceful run lets everything settle): 0 tasks imported twice, 0
tasks without a prediction, 0 annotations lost or counted twice, 0 items stuck, and
every frozen selection pushed as it was. The figures are printed (run with ``-s``) and
recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from connector.labelstudio.adapter import LabelStudioAdapter
from connector.state import StateDB
from tests.fixtures.s3 import upload_digits, write_server_settings

# ``fault``: `make test-fault` runs this test alone; `make test` runs it with the rest.
pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow, pytest.mark.fault]

PHASES = ("INGEST", "TRAIN", "SCORE", "SELECT", "PUSH", "WAIT")
MIN_PER_PHASE = 3
MIN_KILLS = 30
MAX_PER_PHASE = 7
#: The killing stops here even if a quota is short (the test then fails, naming it).
KILL_BUDGET_S = 600.0
POOL_SIZE = 120

SETTINGS = """
[strategy]
name = "margin"
batch_size = 10

[model]
image_size = 16
epochs = 1

[rounds]
min_labeled_fraction = 0.6
retry_backoff_seconds = 0

[polling]
label_studio_seconds = 1
storage_seconds = 60
watch_seconds = 5
overlap_seconds = 2
"""


class Annotator(threading.Thread):
    """Labels open tasks one by one from ground truth (every 7th is skipped)."""

    def __init__(self, adapter: LabelStudioAdapter, truth: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.adapter, self.truth = adapter, truth
        self.stop = threading.Event()
        self.made: set[int] = set()  # annotation ids Label Studio returned
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                open_tasks = self.adapter.open_tasks()
                for item_id, task_id in open_tasks[:3]:
                    if self.stop.is_set():
                        return
                    if len(self.made) % 7 == 6:
                        self.made.add(self.adapter.skip_task(task_id))
                    else:
                        self.made.add(self.adapter.annotate_task(task_id, self.truth[item_id]))
            except Exception:  # a task withdrawn meanwhile, Label Studio busy: try again
                self.errors += 1
            self.stop.wait(0.4)


class Connector:
    """``al-connector run`` as a child process, started and killed by the test."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log = config, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at: list[float] = []  # wall clock, as in the log's timestamps

    def start(self) -> None:
        code = "import sys; from connector.cli import main; sys.exit(main())"
        self.started_at.append(time.time())
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, "run", "--config", str(self.config)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def log_lines(self, text: str) -> int:
        return sum(text in line for line in self.log.read_text(errors="replace").splitlines())

    def restart_seconds(self) -> float:
        """Mean seconds from a restart to the daemon's "al-connector running" log line."""
        up = [
            datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in self.log.read_text(errors="replace").splitlines()
            if "al-connector running:" in line
        ]
        waits = [u - s for s, u in zip(self.started_at[1:], up[1:], strict=False)]
        return round(sum(waits) / max(len(waits), 1), 1)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()


def progress(line: str) -> None:
    """A line on stderr as the test goes (``-s`` shows it): where a slow run spends time."""
    print(line, file=sys.stderr, flush=True)


def _into_push(db: StateDB, at: tuple[int, int], tasks: int) -> bool:
    """Wait until ``tasks`` of round ``at[0]``'s batch are recorded as pushed, so that the
    kill lands between or inside import chunks; False if the push ended first."""
    while db.batch_progress(at[0])[1] < tasks:
        if position(db) != at:
            return False
        time.sleep(0.005)
    return position(db) == at


def phase_of(db: StateDB) -> str | None:
    rnd = db.current_round()
    return None if rnd is None else rnd.phase.value


def position(db: StateDB) -> tuple[int, int] | None:
    """``(round, index of its phase in PHASES)`` of the running phase, or None."""
    rnd = db.current_round()
    if rnd is None or rnd.phase.value not in PHASES:
        return None
    return rnd.round, PHASES.index(rnd.phase.value)


@contextmanager
def running(connector: Connector) -> Iterator[None]:
    try:
        yield
    finally:
        if connector.proc is not None and connector.proc.poll() is None:
            connector.kill()


def test_sigkill_in_every_phase_loses_nothing(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: Any,
) -> None:
    t_start = time.monotonic()
    keys = upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=POOL_SIZE)
    truth = {img.key: img.label for img in digits_dir[1] if img.key in set(keys)}
    config = write_server_settings(
        tmp_path, label_studio.url, s3_server, s3_bucket, title="alc-fault", extra=SETTINGS
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        "ALC_LABEL_STUDIO__TOKEN": label_studio.legacy_token,
        "ALC_LABEL_STUDIO__IMPORT_CHUNK_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    connector = Connector(config, env, tmp_path / "connector.log")
    rng = random.Random(13)
    kills: Counter[str] = Counter()
    with running(connector):
        connector.start()
        db_path = tmp_path / "state" / "state.db"
        deadline = time.monotonic() + 120
        while not db_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        db = StateDB(db_path)
        while db.get_meta("label_studio_project_id") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        project_id = int(db.get_meta("label_studio_project_id") or 0)
        assert project_id, (tmp_path / "connector.log").read_text()[-3000:]
        adapter = LabelStudioAdapter(
            label_studio.url, label_studio.legacy_token, project_id, retry_attempts=2
        )
        annotator = Annotator(adapter, truth)
        annotator.start()
        last = (-1, 0)
        mid_push: list[str] = []  # tasks recorded / selected, when a kill hit a push
        kill_deadline = time.monotonic() + KILL_BUDGET_S
        while time.monotonic() < kill_deadline:
            if sum(kills.values()) >= MIN_KILLS and all(kills[p] >= MIN_PER_PHASE for p in PHASES):
                break
            at = position(db)
            # Only forward: a kill in SELECT resumes in SCORE, so "any other phase" would
            # ping-pong between the two and never reach PUSH.
            if at is None or at <= last or kills[PHASES[at[1]]] >= MAX_PER_PHASE:
                assert connector.proc is not None and connector.proc.poll() is None, (
                    tmp_path / "connector.log"
                ).read_text()[-3000:]
                time.sleep(0.01)
                continue
            if PHASES[at[1]] == "PUSH" and not _into_push(db, at, rng.choice((0, 2, 4, 6))):
                continue  # the push ended first: no kill, the next target is WAIT
            # A few ms into the phase; in PUSH anywhere in a chunk's cycle (reconcile,
            # import request, repair, record), so some kills land mid-import.
            time.sleep(rng.uniform(0.0, 0.6 if PHASES[at[1]] == "PUSH" else 0.05))
            at = position(db) or at  # the phase the kill lands in
            connector.kill()
            phase = PHASES[at[1]]
            kills[phase] += 1
            last = at
            pushed, selected = db.batch_progress(at[0])[1], len(db.selection(at[0]))
            if phase == "PUSH" and 0 < pushed < selected:
                mid_push.append(f"{pushed}/{selected}")
            progress(f"{time.monotonic() - t_start:6.1f}s kill {sum(kills.values())} in {phase}")
            connector.start()
        kill_seconds = time.monotonic() - t_start
        annotator.stop.set()
        annotator.join(timeout=30)
        settle(db, adapter)
        connector.terminate()

    figures = check_everything(db, adapter, annotator.made)
    figures.update(
        kills_per_phase=dict(kills),
        kills=sum(kills.values()),
        restarts=connector.starts - 1,
        kills_mid_push=mid_push,
        restart_seconds=connector.restart_seconds(),
        pushes_resumed_over_landed_imports=connector.log_lines("items already have tasks"),
        pushes_that_waited_for_a_cut_off_import=connector.log_lines("may still commit it"),
        cut_off_imports_adopted=connector.log_lines("have landed; adopting them"),
        annotations_made=len(annotator.made),
        seconds=round(time.monotonic() - t_start, 1),
        kill_seconds=round(kill_seconds, 1),
    )
    print("\nfault injection:", figures)
    assert all(kills[p] >= MIN_PER_PHASE for p in PHASES), kills
    assert sum(kills.values()) >= MIN_KILLS, kills
    assert mid_push, "no kill landed inside a push (part of the batch imported)"
    assert figures["tasks_checked"] > 0
    for name in ("duplicates", "lost", "double_counted", "stuck", "without_prediction"):
        assert figures[name] == 0, figures
    assert figures["selection_mismatches"] == 0, figures
    assert figures["false_requeue_alerts"] == 0, figures


def settle(db: StateDB, adapter: LabelStudioAdapter, timeout_s: float = 120.0) -> None:
    """Until the daemon is quiet: the last round WAITing, every annotation in Label Studio
    seen by a poll, and nothing changing for a few poll cycles. A lost annotation never
    arrives; the timeout then hands the difference to the check."""
    deadline = time.monotonic() + timeout_s
    quiet_since, last = time.monotonic(), None
    while time.monotonic() < deadline:
        n_ls = sum(
            t.total_annotations + t.cancelled_annotations
            for t in adapter.ls.tasks_where(
                [], size=1000, fields="id,total_annotations,cancelled_annotations"
            )
        )
        n_db = db.query("SELECT COUNT(*) AS n FROM items WHERE annotation_id IS NOT NULL")[0]["n"]
        now = (phase_of(db), n_ls, n_db, db.get_meta("ls_watermark"))
        if now != last:
            quiet_since, last = time.monotonic(), now
        elif now[0] == "WAIT" and n_ls == n_db and time.monotonic() - quiet_since > 4:
            return
        time.sleep(0.5)


def check_everything(db: StateDB, adapter: LabelStudioAdapter, made: set[int]) -> dict[str, Any]:
    """Every task and annotation in Label Studio against the state db, one to one."""
    fields = (
        "id,data,annotations,result,was_cancelled,total_predictions,predictions,score,model_version"
    )
    tasks = list(adapter.ls.tasks_where([], size=100, fields=fields))
    by_item: dict[str, list[Any]] = {}
    for task in tasks:
        by_item.setdefault(str(task.data["al_item_id"]), []).append(task)
    duplicates = sum(len(t) - 1 for t in by_item.values())
    # The server's own count, and the listing: both must see the prediction.
    without_prediction = sum(1 for t in tasks if not t.total_predictions or not t.predictions)
    lost: list[str] = []
    for item_id, (task, *_) in by_item.items():
        item = db.item(item_id)
        anns = [_get(a) for a in task.annotations or []]
        finished = [a for a in anns if not a["was_cancelled"]]
        expected = "labeled" if finished else ("skipped" if anns else "queued")
        if item is None or item.status != expected or item.task_id != task.id:
            lost.append(f"{item_id}: {expected} in Label Studio, {item} in the state db")
        elif finished:
            choice = finished[-1]["result"][0]["value"]["choices"][0]
            if item.label != choice:
                lost.append(f"{item_id}: {choice} in Label Studio, {item.label} in the state db")
    # Every annotation in Label Studio has exactly one history row in the state db (the
    # status it was ingested as), and every ingested annotation still exists there.
    in_ls = {
        int(a["id"]): (str(t.data["al_item_id"]), "skipped" if a["was_cancelled"] else "labeled")
        for t in tasks
        for a in map(_get, t.annotations or [])
    }
    events = Counter(
        (r["item_id"], int(r["annotation_id"]), r["status"])
        for r in db.query(
            "SELECT item_id, annotation_id, status FROM label_events "
            "WHERE annotation_id IS NOT NULL AND status IN ('labeled', 'skipped', 'invalid')"
        )
    )
    for ann_id, (item_id, status) in in_ls.items():
        if events[(item_id, ann_id, status)] == 0:
            lost.append(f"{item_id}: annotation {ann_id} ({status}) never ingested")
    double_counted = [f"{k} ingested {n} times" for k, n in events.items() if n > 1]
    phantom = [f"{k}: not in Label Studio" for k in events if k[1] not in in_ls]
    stuck = [
        r["item_id"]
        for r in db.query("SELECT item_id FROM items WHERE status = 'queued'")
        if r["item_id"] not in by_item
    ]
    withdrawn = Counter(
        r["item_id"]
        for r in db.query("SELECT item_id FROM label_events WHERE status = 'withdrawn'")
    )
    mismatches: list[str] = []
    versions: dict[int, set[str]] = {}
    for rnd in db.rounds():
        if rnd.phase.value not in ("WAIT", "DONE"):
            stuck.append(f"round {rnd.round} in {rnd.phase.value}")
        for sel in db.selection(rnd.round):
            found = [t for t in by_item.get(sel.item_id, []) if t.data["al_round"] == rnd.round]
            if not found:
                # Withdrawn at a later round's push (nobody had opened it): gone by design.
                if withdrawn[sel.item_id] > 0:
                    withdrawn[sel.item_id] -= 1
                else:
                    mismatches.append(f"round {rnd.round}: {sel.item_id} was never pushed")
                continue
            task = found[0]
            preds = [_get(p) for p in task.predictions or []]  # none: counted above
            versions.setdefault(rnd.round, set()).update(str(p["model_version"]) for p in preds)
            want = None if sel.confidence is None else float(sel.confidence)
            if task.data["al_priority"] != sel.rank or any(
                (p.get("score") is None) != (want is None)
                or (want is not None and abs(float(p["score"]) - want) > 1e-6)
                for p in preds
            ):
                mismatches.append(f"round {rnd.round}: {sel.item_id} pushed differently")
    mismatches += [f"round {r}: model versions {v}" for r, v in versions.items() if len(v) > 1]
    # Every task is recorded as its round's push (a withdrawn one leaves both sides).
    recorded = {(r["round"], r["item_id"]) for r in db.query("SELECT round, item_id FROM pushes")}
    in_ls_pushed = {(int(t.data["al_round"]), str(t.data["al_item_id"])) for t in tasks}
    mismatches += [
        f"round {r}: {i} in Label Studio, no push recorded" for r, i in in_ls_pushed - recorded
    ]
    mismatches += [f"round {r}: {i} recorded, no task" for r, i in recorded - in_ls_pushed]
    refused = [
        a["message"] for a in db.query("SELECT message FROM alerts WHERE kind = 'item_requeued'")
    ]
    return {
        "tasks_checked": len(tasks),
        "annotations_checked": len(in_ls),
        "rounds": len(db.rounds()),
        "duplicates": duplicates,
        "lost": len(lost),
        "double_counted": len(double_counted) + len(phantom),
        "stuck": len(stuck),
        "without_prediction": without_prediction,
        "selection_mismatches": len(mismatches),
        # Annotations the annotator saved that Label Studio no longer has: a task withdrawn
        # in the milliseconds between its check and its delete (adapter.withdraw_tasks).
        "deleted_with_task": len(made - set(in_ls)),
        "false_requeue_alerts": len(refused),
        "examples": (lost + double_counted + phantom + stuck + mismatches + refused)[:5],
    }


def _get(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else obj.model_dump()
