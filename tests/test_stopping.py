"""Stopping criteria: each one fires in a real round, stops the pushes with a ``stopped``
alert, is shown by ``status`` and the round report, and ``round resume`` lifts it.

Driven with the in-memory fakes (tests/fakes.py) and the CLI on the same state db.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydantic import ValidationError

from connector.cli import main
from connector.rounds import stopping
from connector.rounds.engine import RoundEngine
from connector.settings import Settings, StoppingSettings
from connector.state import Phase
from tests.fakes import FakeLabeling, build, label_all, settings_file


def stopping_setup(
    tmp_path: Path, digit_objects: Any, **criteria: Any
) -> tuple[RoundEngine, FakeLabeling, dict[str, str], Path]:
    """The fakes' engine with ``[stopping]`` criteria, and a settings file naming its db."""
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects, stopping=criteria)
    toml = "".join(f"{k} = {v}\n" for k, v in criteria.items())
    return engine, labeling, truth, settings_file(tmp_path, engine.classes, f"[stopping]\n{toml}")


def cli(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result


def stopped_alerts(engine: RoundEngine) -> list[Any]:
    return [a for a in engine.state.alerts(include_resolved=True) if a["kind"] == "stopped"]


def tasks_of_round(labeling: FakeLabeling, number: int) -> int:
    return sum(1 for t in labeling.tasks.values() if t.task.round == number)


def run_rounds(engine: RoundEngine, labeling: FakeLabeling, truth: dict[str, str], n: int) -> Any:
    """Step and label ``n`` times; returns the last round."""
    rnd = None
    for _ in range(n):
        rnd = engine.step()
        label_all(labeling, truth)
    return rnd


# ------------------------------------------------------------------ the rules


def test_plateau_rule_and_waivers_on_figures() -> None:
    cfg = StoppingSettings(plateau_rounds=2, plateau_min_gain=0.01)
    rising = [(1, 0.50), (2, 0.60), (3, 0.70)]
    assert stopping.evaluate(cfg, rising, 100, 4, waiting=False)[0] is None
    flat = [(1, 0.50), (2, 0.80), (3, 0.805), (4, 0.79)]
    stop, figures = stopping.evaluate(cfg, flat, 100, 5, waiting=False)
    assert stop is not None and stop.criterion == "plateau"
    assert figures["plateau"]["best_before"] == 0.80
    assert figures["plateau"]["gain"] == pytest.approx(0.005)
    assert "less than stopping.plateau_min_gain 0.01" in stop.message
    # After a resume at round 4 the plateau is judged over later rounds only.
    waived = stopping.waiver_after(
        {}, {"criterion": "plateau", "figures": figures["plateau"], "round": 4}
    )
    assert stopping.evaluate(cfg, flat, 100, 5, waiting=False, waivers=waived)[0] is None
    # max_rounds counts only while the last round waits: its batch still goes out.
    cfg = StoppingSettings(max_rounds=3)
    assert stopping.evaluate(cfg, [], 10, 3, waiting=False)[0] is None
    stop, _ = stopping.evaluate(cfg, [], 10, 3, waiting=True)
    assert stop is not None and stop.figures == {"rounds": 3, "max_rounds": 3}
    waived = {"max_rounds": {"value": 3, "round": 2}}
    assert stopping.evaluate(cfg, [], 10, 3, waiting=True, waivers=waived)[0] is None
    raised = StoppingSettings(max_rounds=4)
    assert stopping.evaluate(raised, [], 10, 4, waiting=True, waivers=waived)[0] is not None


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"stopping": {"target_accuracy": 95}}, "95 % is 0.95: set e.g. 0.95"),
        ({"stopping": {"target_accuracy": 0}}, "not a fraction in \\(0, 1\\]"),
        ({"stopping": {"plateau_min_gain": 2}}, "2 points is 0.02"),
        ({"stopping": {"max_labels": 30}, "validation": {"size": 30}}, "raise stopping.max_labels"),
        ({"rounds": {"max_rounds": 3}}, "move it to \\[stopping\\]"),
        ({"stopping": {"plateau_rounds": 0}}, "greater than or equal to 1"),
    ],
)
def test_nonsense_values_fail_at_start_up_with_the_fix(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**values)


def test_check_names_the_fix_for_a_bad_stopping_value(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[stopping]\ntarget_accuracy = 95\n")
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 2
    assert "stopping.target_accuracy 95" in result.output and "0.95" in result.output


# -------------------------------------------------------- each criterion firing


def test_max_rounds_stops_after_the_last_batch_and_resume_goes_on(
    tmp_path: Path, digit_objects: Any
) -> None:
    engine, labeling, truth, config = stopping_setup(tmp_path, digit_objects, **{"max_rounds": 2})
    run_rounds(engine, labeling, truth, 2)
    assert tasks_of_round(labeling, 1) == 20  # the last round still pushes its batch
    rnd = engine.step()
    assert rnd is not None and (rnd.round, rnd.phase) == (1, Phase.STOPPED)
    pushed = len(labeling.tasks)
    for _ in range(3):  # stopped: nothing more is pushed, however often it is asked
        engine.step()
    assert len(labeling.tasks) == pushed
    [alert] = stopped_alerts(engine)
    assert "max_rounds" in alert["message"] and "`al-connector round resume`" in alert["message"]
    status = json.loads(cli(config, "status", "--json").output)
    assert status["stopped"]["criterion"] == "max_rounds"
    assert status["stopped"]["figures"] == {"rounds": 2, "max_rounds": 2}
    assert status["alerts"]["by_kind"] == {"stopped": 1}
    assert status["current"]["phase"] == "STOPPED" and status["current"]["phase_age_s"] >= 0
    assert [r["round"] for r in status["last_rounds"]] == [0, 1]
    text = cli(config, "status").output
    assert "stopped by max_rounds" in text and "round 1: STOPPED for" in text
    assert "alerts: 1 (stopped 1)" in text
    report = (engine.rounds_dir / "0001" / "report.md").read_text()
    assert "Stopped by max_rounds" in report and "2 rounds have run" in report

    said = cli(config, "round", "resume").output
    assert "lift the stop of round 1" in said and "stays off while stopping.max_rounds is 2" in said
    rnd = engine.step()
    assert rnd is not None and rnd.round == 2 and rnd.phase is Phase.WAIT
    assert tasks_of_round(labeling, 2) == 20
    status = json.loads(cli(config, "status", "--json").output)
    assert status["stopped"] is None
    assert status["alerts"]["by_kind"] == {}  # the stopped alert is resolved by the resume
    [alert] = stopped_alerts(engine)
    assert alert["resolved_at"] is not None
    label_all(labeling, truth)
    assert engine.step().round == 3  # waived at 2: it does not fire again


def test_max_labels_stops_while_waiting(tmp_path: Path, digit_objects: Any) -> None:
    engine, labeling, truth, config = stopping_setup(tmp_path, digit_objects, **{"max_labels": 60})
    run_rounds(engine, labeling, truth, 2)  # 50 labels after round 0, then 70
    rnd = engine.step()
    assert rnd is not None and (rnd.round, rnd.phase) == (1, Phase.STOPPED)
    record = stopping.stopped(engine.state)
    assert record is not None and record["figures"] == {"labeled": 70, "max_labels": 60}
    assert record["resume_phase"] == "WAIT"

    # status only reads: it neither writes the summary nor plots the curve
    def files() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in engine.rounds_dir.rglob("*")}

    before = files()
    status = json.loads(cli(config, "status", "--json").output)
    assert status["stopped"]["criterion"] == "max_labels"
    assert files() == before


def test_target_accuracy_stops_before_anything_is_pushed(
    tmp_path: Path, digit_objects: Any
) -> None:
    engine, labeling, truth, config = stopping_setup(
        tmp_path, digit_objects, **{"target_accuracy": 0.2}
    )
    rnd = run_rounds(engine, labeling, truth, 2)
    assert rnd is not None and (rnd.round, rnd.phase) == (1, Phase.STOPPED)
    assert tasks_of_round(labeling, 1) == 0  # trained, reached the target: no batch
    record = stopping.stopped(engine.state)
    assert record is not None and record["resume_phase"] == "SCORE"
    acc = rnd.metrics["validation"]["accuracy"]
    assert record["figures"] == {"accuracy": acc, "round": 1, "target_accuracy": 0.2}
    assert rnd.metrics["stopped"]["criterion"] == "target_accuracy"
    assert "Stopped by target_accuracy" in (engine.rounds_dir / "0001" / "report.md").read_text()
    # Resuming goes on from SCORE: the round pushes its batch.
    cli(config, "round", "resume")
    rnd = engine.step()
    assert rnd is not None and (rnd.round, rnd.phase) == (1, Phase.WAIT)
    assert tasks_of_round(labeling, 1) == 20
    status = json.loads(cli(config, "status", "--json").output)
    assert status["stopped"] is None and status["queue"]["queued"] == 20
    assert status["queue"]["oldest_age_s"] >= 0
    criteria = status["stopping"]["criteria"]["target_accuracy"]
    assert criteria["target_accuracy"] == 0.2 and criteria["round"] == 1
    text = cli(config, "status").output
    assert "queue: 20 tasks open, the oldest for" in text
    assert "stopping: running; target_accuracy" in text


def test_plateau_stops_after_training(tmp_path: Path, digit_objects: Any) -> None:
    engine, labeling, truth, _ = stopping_setup(
        tmp_path, digit_objects, plateau_rounds=1, plateau_min_gain=0.9
    )
    rnd = run_rounds(engine, labeling, truth, 3)
    assert rnd is not None and (rnd.round, rnd.phase) == (2, Phase.STOPPED)
    record = stopping.stopped(engine.state)
    assert record is not None and record["criterion"] == "plateau"
    assert record["figures"]["trained_rounds"] == 2 and record["figures"]["gain"] < 0.9
    assert tasks_of_round(labeling, 2) == 0
    assert len(stopped_alerts(engine)) == 1
