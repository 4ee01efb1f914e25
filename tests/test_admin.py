"""Admin commands with the in-memory fakes: the CLI journals, the engine applies at its
next step. (The same commands against the real servers: tests/test_admin_servers.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector.cli import main
from connector.ops import alerts
from connector.rounds.engine import RoundEngine
from connector.settings import AlertSettings
from connector.state import Phase, StateDB, iso, utcnow
from tests.fakes import FakeLabeling, build, label_all, settings_file


@pytest.fixture
def setup(
    tmp_path: Path, digit_objects: Any
) -> tuple[RoundEngine, FakeLabeling, dict[str, str], Path]:
    """Round 0 pushed (30 validation + 20 train tasks) and a settings file for the CLI
    that names the same state db."""
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    config = settings_file(tmp_path, engine.classes)
    return engine, labeling, truth, config


def cli(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)], input=input)


def ok(config: Path, *args: str) -> Result:
    result = cli(config, *args)
    assert result.exit_code == 0, result.output
    return result


def journal(state: StateDB) -> list[dict[str, Any]]:
    return state.commands()


def discovered(engine: RoundEngine, n: int) -> list[str]:
    return list(engine.state.iter_candidate_ids())[:n]


# ------------------------------------------------------------------ round ...


def test_start_now_starts_a_round_while_waiting(setup: Any) -> None:
    engine, _, _, config = setup
    assert engine.step().round == 0  # nothing labeled: round 0 keeps waiting
    said = ok(config, "round", "start-now").output
    assert "journaled as command #1" in said
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.trigger == "admin"
    assert rnd.phase is Phase.WAIT
    (cmd,) = journal(engine.state)
    assert cmd["status"] == "applied" and cmd["user"]
    assert engine.step().round == 1, "start-now starts one round, not every round"


def test_pause_holds_a_labeled_batch_until_resume(setup: Any) -> None:
    engine, labeling, truth, config = setup
    ok(config, "round", "pause")
    label_all(labeling, truth)
    assert engine.step().round == 0
    status = json.loads(ok(config, "status", "--json").output)
    assert status["paused"] is True and status["pending_commands"] == []
    ok(config, "round", "resume")
    status = json.loads(ok(config, "status", "--json").output)
    assert [c["command"] for c in status["pending_commands"]] == ["resume"]
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.trigger == "batch-labeled"


def test_round_set_changes_the_next_round_only_or_from_now_on(setup: Any) -> None:
    engine, labeling, truth, config = setup
    said = ok(config, "round", "set", "--strategy", "margin", "--batch-size", "5").output
    assert "for the next round only" in said
    label_all(labeling, truth)
    rnd = engine.step()
    assert (rnd.round, rnd.strategy, rnd.batch_size) == (1, "margin", 5)
    assert len([t for t in labeling.tasks.values() if t.task.round == 1]) == 5
    assert json.loads(ok(config, "status", "--json").output)["overrides"]["next_round"] == {}
    label_all(labeling, truth)
    rnd = engine.step()
    assert (rnd.round, rnd.strategy, rnd.batch_size) == (2, "random", 20)
    ok(config, "round", "set", "--strategy", "power", "--param", "beta=2", "--persist")
    ok(config, "round", "set", "--batch-size", "7", "--persist")
    for expected in (3, 4):
        label_all(labeling, truth)
        rnd = engine.step()
        assert (rnd.round, rnd.strategy, rnd.params, rnd.batch_size) == (
            expected,
            "power",
            {"beta": 2},
            7,
        )
    overrides = json.loads(ok(config, "status", "--json").output)["overrides"]
    assert overrides["persistent"] == {"strategy": "power", "params": {"beta": 2}, "batch_size": 7}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "entrpy"], "unknown strategy 'entrpy'; did you mean 'entropy'?"),
        (["--strategy", "power", "--param", "betaa=1"], "did you mean 'beta'?"),
        (["--param", "nope"], "is not KEY=VALUE"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        ([], "needs --strategy, --param or --batch-size"),
    ],
)
def test_round_set_refuses_bad_input_and_changes_nothing(
    setup: Any, args: list[str], message: str
) -> None:
    engine, _, _, config = setup
    result = cli(config, "round", "set", *args)
    assert result.exit_code == 1 and message in result.output
    assert journal(engine.state) == []


def test_skip_closes_the_round_and_starts_the_next(setup: Any) -> None:
    engine, _, _, config = setup
    ok(config, "round", "skip")
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1
    old = engine.state.get_round(0)
    assert old is not None and old.phase is Phase.DONE and old.metrics["skipped"] is True


def test_rollback_withdraws_only_unannotated_training_tasks(setup: Any) -> None:
    engine, labeling, truth, config = setup
    train = sorted(i for i, t in labeling.tasks.items() if t.task.split == "train")
    labeling.annotate(train[0], "labeled", truth[train[0]])
    labeling.annotate(train[1], "skipped")
    engine.poll_labels()
    ok(config, "round", "pause")  # keep round 1 from starting after the rollback
    refused = cli(config, "round", "rollback", "0", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    said = ok(config, "round", "rollback", "0", "--yes").output
    assert "18 unannotated training tasks" in said
    engine.step()
    assert set(train[:2]) <= set(labeling.tasks)
    assert not set(train[2:]) & set(labeling.tasks), "the unannotated ones are gone"
    assert sum(t.task.split == "validation" for t in labeling.tasks.values()) == 30
    for key in train[2:]:
        item = engine.state.item(key)
        assert item is not None and item.status == "discovered" and item.task_id is None
    assert engine.state.item(train[0]).status == "labeled"  # type: ignore[union-attr]
    assert engine.state.batch_progress(0) == (2, 32)
    nothing = cli(config, "round", "rollback", "0", "--yes")
    assert nothing.exit_code == 1 and "round 0 has nothing to withdraw" in nothing.output
    missing = cli(config, "round", "rollback", "9", "--yes")
    assert missing.exit_code == 1 and "round 9 does not exist (rounds 0..0)" in missing.output
    # The withdrawn items are candidates again, pushed once each.
    ok(config, "round", "resume")
    ok(config, "round", "set", "--batch-size", "500")
    label_all(labeling, truth)
    engine.step()
    assert set(train[2:]) <= set(labeling.tasks)
    rows = engine.state.query("SELECT item_id, COUNT(*) AS n FROM pushes GROUP BY item_id")
    assert {r["n"] for r in rows} == {1}


# ------------------------------------------------------------------ items ...


def test_included_items_go_first_and_excluded_ones_never(setup: Any, tmp_path: Path) -> None:
    engine, labeling, truth, config = setup
    pick, *junk = discovered(engine, 4)
    ok(config, "items", "include", pick)
    keys = tmp_path / "junk.txt"
    keys.write_text(f"# flagged by the customer\n{junk[0]}\n{junk[1]}\n")
    ok(config, "items", "exclude", junk[2], "--from-file", str(keys))
    ok(config, "round", "set", "--batch-size", "500")  # the whole rest of the pool
    label_all(labeling, truth)
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1
    first = min((t for t in labeling.tasks.values() if t.task.round == 1), key=lambda t: t.id)
    assert first.item_id == pick and first.task.priority == 0
    assert not set(junk) & set(labeling.tasks)
    assert list(engine.state.iter_candidate_ids()) == []
    shown = json.loads(ok(config, "items", "show", junk[0], "--json").output)
    assert shown["status"] == "excluded" and "excluded by" in shown["reason"]


def test_including_an_excluded_item_takes_it_back(setup: Any) -> None:
    engine, labeling, truth, config = setup
    key = discovered(engine, 1)[0]
    ok(config, "items", "exclude", key)
    engine.step()
    ok(config, "items", "include", key)
    label_all(labeling, truth)
    engine.step()
    assert labeling.tasks[key].task.round == 1 and labeling.tasks[key].task.priority == 0
    events = [e["status"] for e in engine.state.item_history(key)["events"]]  # type: ignore[index]
    assert events[:2] == ["excluded", "included"]


@pytest.mark.parametrize("command", ["include", "exclude", "requeue"])
def test_item_commands_refuse_keys_not_in_the_pool(setup: Any, command: str) -> None:
    engine, _, _, config = setup
    extra = ["--yes"] if command == "requeue" else []
    result = cli(config, "items", command, "nope.png", *extra)
    assert result.exit_code == 1 and "not in the pool: nope.png" in result.output
    assert journal(engine.state) == []


def test_item_commands_refuse_items_in_the_wrong_state(setup: Any) -> None:
    engine, labeling, _, config = setup
    queued = sorted(labeling.tasks)[0]
    fresh = discovered(engine, 1)[0]
    for args in (["include", queued], ["exclude", queued], ["requeue", fresh, "--yes"]):
        result = cli(config, "items", *args)
        assert result.exit_code == 1 and "nothing was changed" in result.output, result.output
    assert journal(engine.state) == []


def test_requeue_makes_one_new_task_and_one_alert(setup: Any) -> None:
    engine, labeling, _, config = setup
    key = sorted(labeling.tasks)[0]
    old = labeling.tasks[key].id
    ok(config, "items", "requeue", key, "--yes")
    engine.step()
    new = labeling.tasks[key]
    assert new.id != old and new.task.priority == 0
    assert old not in {t.id for t in labeling.tasks.values()}
    item = engine.state.item(key)
    assert item is not None and item.task_id == new.id and item.requeue_count == 1
    (alert,) = [a for a in engine.state.unsent_alerts() if a["kind"] == "item_requeued"]
    assert key in alert["message"] and f"task {old} withdrawn" in alert["message"]
    engine.step()  # applied once: no second task, no second alert
    assert len([a for a in engine.state.unsent_alerts() if a["kind"] == "item_requeued"]) == 1
    history = ok(config, "items", "show", key).output
    assert "requeued" in history and f"task {new.id}" in history


def test_requeue_stalled_takes_tasks_open_too_long(setup: Any) -> None:
    engine, labeling, _, config = setup
    stale = sorted(labeling.tasks)[:3]
    old = iso(utcnow() - timedelta(days=3))
    with engine.state.tx() as c:
        for key in stale:
            c.execute("UPDATE items SET queued_at = ? WHERE item_id = ?", (old, key))
    none = cli(config, "items", "requeue", "--stalled", "--older-than", "5d", "--yes")
    assert none.exit_code == 1 and "nothing to requeue" in none.output
    ok(config, "items", "requeue", "--stalled", "--older-than", "2d", "--yes")
    engine.step()
    assert [i.requeue_count for i in map(engine.state.item, stale)] == [1, 1, 1]  # type: ignore[union-attr]
    kinds = [a["kind"] for a in engine.state.unsent_alerts()]
    assert kinds.count("item_requeued") == 3


# ------------------------------------------------------------------ reading


def test_rounds_items_export_and_audit_read_the_state(setup: Any, tmp_path: Path) -> None:
    engine, labeling, truth, config = setup
    label_all(labeling, truth, skip_every=7)
    ok(config, "round", "start-now")
    engine.step()
    rounds = json.loads(ok(config, "rounds", "list", "--json").output)
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["phase"] == "DONE" and rounds[1]["trigger"] == "admin"
    assert {"INGEST", "SCORE", "SELECT", "PUSH", "WAIT"} <= set(rounds[0]["phase_seconds"])
    shown = ok(config, "rounds", "show", "1").output
    assert "strategy: random" in shown and "report:" in shown and "report.md" in shown
    assert cli(config, "rounds", "show", "7").exit_code == 1
    table = ok(config, "rounds", "list").output.splitlines()
    assert table[0].split()[:3] == ["round", "phase", "strategy"] and len(table) == 3
    out = tmp_path / "labels.csv"
    ok(config, "export", "--out", str(out))
    lines = out.read_text().splitlines()
    assert lines[0] == "key,label,split,validation,round,annotator,labeled_at"
    labeled = engine.state.count_items()["labeled"]
    assert len(lines) == 1 + labeled
    exported = json.loads(ok(config, "export", "--format", "json").output)
    assert (
        sum(r["validation"] for r in exported)
        == sum(1 for r in exported if r["split"] == "validation")
        > 0
    )
    audit = json.loads(ok(config, "audit", "--json").output)
    assert [(a["command"], a["status"]) for a in audit] == [("start-now", "applied")]
    assert audit[0]["user"] and audit[0]["applied_at"]
    assert "start-now" in ok(config, "audit").output
    missing = cli(config, "items", "show", "nope.png")
    assert missing.exit_code == 1 and "not in the pool" in missing.output


def test_commands_wait_while_the_daemon_is_stopped(setup: Any) -> None:
    engine, _, _, config = setup
    ok(config, "round", "pause")
    pending = json.loads(ok(config, "status", "--json").output)["pending_commands"]
    assert [c["command"] for c in pending] == ["pause"]
    assert engine.state.get_meta("paused") is None  # nothing applied yet
    engine.step()  # the daemon (re)starts
    assert engine.state.get_meta("paused") == "1"


# ------------------------------------------------------------------ concurrency


def test_two_admins_and_the_daemon_write_at_once(setup: Any) -> None:
    engine, _, _, _ = setup
    keys = discovered(engine, 60)
    errors: list[BaseException] = []
    stop = threading.Event()

    def admin(mine: list[str]) -> None:
        try:
            state = StateDB(engine.settings.db_path())  # another process's connection
            from connector.rounds import admin as rounds_admin

            for key in mine:
                rounds_admin.journal(state, rounds_admin.check_exclude(state, [key]), "admin")
                rounds_admin.journal(state, rounds_admin.check_pause(state), "admin")
                rounds_admin.journal(state, rounds_admin.check_resume(state), "admin")
        except BaseException as exc:
            errors.append(exc)

    def daemon() -> None:
        try:
            while not stop.is_set():
                engine.step()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=admin, args=(keys[i::2],)) for i in range(2)]
    runner = threading.Thread(target=daemon)
    runner.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    runner.join()
    engine.step()
    assert errors == []
    commands = journal(engine.state)
    assert len(commands) == 3 * 60 and {c["status"] for c in commands} == {"applied"}
    assert all(engine.state.item(k).status == "excluded" for k in keys)  # type: ignore[union-attr]
    assert engine.state.get_meta("paused") == "0"


# ------------------------------------------------------------------ the stall alert


@pytest.mark.parametrize(
    ("kind", "command", "help_says"),
    [
        ("round_stalled", "al-connector round start-now", "Start the next round now"),
        (
            "task_stalled",
            "al-connector items requeue --stalled --older-than 24h",
            "Re-send items on purpose",
        ),
    ],
)
def test_the_stall_alerts_commands_exist_on_a_cold_start(
    setup: Any, kind: str, command: str, help_says: str
) -> None:
    engine, _, _, config = setup
    old = iso(utcnow() - timedelta(days=9))
    with engine.state.tx() as c:
        c.execute("UPDATE rounds SET phase_at = ?", (old,))
        c.execute("UPDATE items SET queued_at = ? WHERE status = 'queued'", (old,))
    alerts.detect(engine.state, AlertSettings())
    (stall,) = [a for a in engine.state.unsent_alerts() if a["kind"] == kind]
    assert stall["message"].split("`")[1] == command
    # It does what it says, on this state: the stalled tasks are re-sent.
    if kind == "task_stalled":
        ok(config, *command.split()[1:], "--yes")
        engine.step()
        assert engine.state.count_items()["queued"] == 50
        assert len([a for a in engine.state.unsent_alerts() if a["kind"] == "item_requeued"]) == 50
    root = Path(__file__).resolve().parents[1]
    cold = subprocess.run(
        [
            sys.executable,
            "-c",
            "from connector.cli import main; main()",
            *command.split()[1:],
            "--help",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert cold.returncode == 0, cold.stderr
    assert help_says in cold.stdout


# ------------------------------------------------------------------ a running daemon


def test_a_running_daemon_applies_commands_at_its_next_tick(tmp_path: Path) -> None:
    """The real scheduler loop (``Daemon.run``, in a child process, on the fakes): a
    command journaled by the CLI is applied within a round tick."""
    from tests.test_daemon import SCRIPT, daemon_process

    config = tmp_path / "settings.toml"
    config.write_text(
        f'[storage]\nkind = "local"\nlocal_root = "{tmp_path / "pool"}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[strategy]\nname = "random"\n'
    )
    with daemon_process(SCRIPT, tmp_path, until="round 0") as (proc, _):
        drained: list[str] = []
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: drained.extend(proc.stdout), daemon=True)
        reader.start()
        state = StateDB(tmp_path / "state" / "state.db")
        deadline = time.monotonic() + 60
        while (r := state.current_round()) is None or r.phase is not Phase.WAIT:
            assert time.monotonic() < deadline, "".join(drained)
            time.sleep(0.2)
        ok(config, "round", "start-now")
        while (r := state.current_round()) is None or r.round < 1:
            assert time.monotonic() < deadline, "".join(drained)
            time.sleep(0.2)
        assert r.trigger == "admin"
        assert [c["status"] for c in state.commands()] == ["applied"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0, "".join(drained)
