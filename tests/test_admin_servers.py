"""Admin commands against the daemon's jobs on the real servers: Label Studio (the
session's server) and moto's S3 over HTTP. The CLI journals; ``Daemon.run_once`` runs
the jobs the scheduler runs (the round job applies the commands first). The learner is
the fast pixel learner of the unit tests: what is tested here is what the commands do
to Label Studio and the state db, not the model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector.app import build_app
from connector.cli import main
from connector.devtools.datasets import LabeledImage
from connector.ops.daemon import Daemon
from connector.settings import load_settings
from tests.fakes import PixelLearner
from tests.fixtures.s3 import upload_digits, write_server_settings

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3]


def write_config(tmp_path: Path, ls_url: str, endpoint: str, bucket: str) -> Path:
    extra = '[strategy]\nname = "entropy"\nbatch_size = 10\n[rounds]\nmin_labeled_fraction = 1.0\n'
    return write_server_settings(tmp_path, ls_url, endpoint, bucket, title="alc-admin", extra=extra)


def test_admin_commands_steer_the_daemon_on_real_servers(
    tmp_path: Path,
    label_studio: Any,
    ls_client: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=120)
    truth = {img.key: img.label for img in digits_dir[1]}
    config = write_config(tmp_path, label_studio.url, s3_server, s3_bucket)
    monkeypatch.setenv("ALC_LABEL_STUDIO__TOKEN", label_studio.legacy_token)
    settings = load_settings(config)
    app = build_app(settings, learner=PixelLearner())
    daemon = Daemon(settings, app.engine)
    state = app.engine.state
    adapter: Any = app.engine.ports.labeling
    project = app.project.project_id

    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--config", str(config)])

    def ok(*args: str) -> Result:
        result = cli(*args)
        assert result.exit_code == 0, result.output
        return result

    def tasks() -> list[Any]:
        return list(ls_client.tasks.list(project=project, fields="all"))

    def of_round(number: int) -> dict[str, Any]:
        return {t.data["al_item_id"]: t for t in tasks() if t.data["al_round"] == number}

    def annotate(number: int | None = None, limit: int | None = None) -> list[str]:
        done = []
        for item, task_id in adapter.open_tasks():
            if number is not None and state.item(item).round != number:  # type: ignore[union-attr]
                continue
            if limit is not None and len(done) >= limit:
                break
            adapter.annotate_task(task_id, truth[item])
            done.append(item)
        return done

    def no_duplicates() -> None:
        counts = Counter(t.data["al_item_id"] for t in tasks())
        assert set(counts.values()) == {1}, counts.most_common(3)

    status = daemon.run_once()
    assert status["round"]["number"] == 0 and status["round"]["batch_total"] == 20

    # pause holds a labeled batch
    ok("round", "pause")
    annotate()
    status = daemon.run_once()
    assert status["paused"] is True and status["round"]["number"] == 0

    # round set, include, exclude: the next round's strategy, batch and items
    pick, junk = list(state.iter_candidate_ids())[:2]
    ok("round", "set", "--strategy", "margin", "--batch-size", "5")
    ok("items", "include", pick)
    ok("items", "exclude", junk)
    ok("round", "resume")
    status = daemon.run_once()
    assert status["round"]["number"] == 1 and status["round"]["strategy"] == "margin"
    first = of_round(1)
    assert len(first) == 5 and pick in first and first[pick].data["al_priority"] == 0

    # start-now starts a round while round 1 waits; the override was for round 1 only.
    # Pushing round 2 withdraws round 1's open tasks; the skipped one stays.
    key = next(i for i in first if i != pick)
    adapter.skip_task(first[key].id)
    ok("round", "start-now")
    status = daemon.run_once()
    assert status["round"]["number"] == 2 and status["round"]["strategy"] == "entropy"
    assert len(of_round(2)) == 10 and state.get_round(2).trigger == "admin"  # type: ignore[union-attr]

    # rollback deletes only the unannotated tasks; the items go back to the pool
    kept = annotate(number=2, limit=3)
    ok("round", "pause")
    ok("round", "rollback", "2", "--yes")
    daemon.run_once()
    assert set(of_round(2)) == set(kept)
    # 120 in the pool: 20 + 1 (round 1's skipped one) pushed, 3 kept, 1 excluded; the 7
    # rolled back and round 1's 4 withdrawn are candidates
    assert len(list(state.iter_candidate_ids())) == 120 - 20 - 1 - 3 - 1
    no_duplicates()

    # requeue: one new task and one alert
    old = first[key].id
    ok("items", "requeue", key, "--yes")
    daemon.run_once()
    now = [t for t in tasks() if t.data["al_item_id"] == key]
    assert len(now) == 1 and now[0].id != old
    assert state.item(key).task_id == now[0].id  # type: ignore[union-attr]
    alerts = state.query("SELECT * FROM alerts WHERE kind = 'item_requeued'")
    assert len(alerts) == 1 and key in alerts[0]["message"]
    no_duplicates()
    assert junk not in {t.data["al_item_id"] for t in tasks()}

    history = json.loads(ok("items", "show", key, "--json").output)
    assert [p["task_id"] for p in history["pushes"]] == [old, now[0].id]
    assert history["requeue_count"] == 1 and history["status"] == "queued"

    # skip closes round 2 without waiting for its batch; the next round starts
    ok("round", "skip")
    ok("round", "resume")
    status = daemon.run_once()
    assert status["round"]["number"] == 3 and status["paused"] is False
    assert state.get_round(2).metrics["skipped"] is True  # type: ignore[union-attr]
    listed = json.loads(ok("rounds", "list", "--json").output)
    assert [r["phase"] for r in listed] == ["DONE", "DONE", "DONE", "WAIT"]
    assert listed[2]["metrics"]["rolled_back"] == 7 and "PUSH" in listed[1]["phase_seconds"]
    assert "report.md" in ok("rounds", "show", "1").output
    no_duplicates()

    # bad input: a clear message, a non-zero exit, nothing journaled
    journaled = len(state.commands())
    for args, message in [
        (["round", "rollback", "0", "--yes"], "round 0 has nothing to withdraw"),
        (["round", "rollback", "9", "--yes"], "round 9 does not exist"),
        (["items", "include", "nope.png"], "not in the pool: nope.png"),
        (["round", "set", "--strategy", "entrpy"], "did you mean 'entropy'?"),
        (["round", "set", "--batch-size", "0"], "--batch-size must be at least 1"),
    ]:
        result = cli(*args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert len(state.commands()) == journaled

    audit = json.loads(ok("audit", "--json").output)
    assert [a["command"] for a in audit] == [
        "pause",
        "set",
        "include",
        "exclude",
        "resume",
        "start-now",
        "pause",
        "rollback",
        "requeue",
        "skip",
        "resume",
    ]
    assert {a["status"] for a in audit} == {"applied"}
    exported = json.loads(ok("export", "--format", "json").output)
    assert len(exported) == state.count_items()["labeled"] == 23
    assert sum(r["validation"] for r in exported) == 10
