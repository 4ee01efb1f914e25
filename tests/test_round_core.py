"""The round core: the plan, the six committed phases, the failure policy, the MC rule.

Driven with in-memory fakes (tests/fakes.py); the CLI tests at the end use real settings
files and check that nothing is written before the plan is valid.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.contracts.errors import ConfigError
from connector.rounds.context import OVERRIDE_STRATEGY
from connector.rounds.plan import Overrides, resolve_plan
from connector.state import Phase, utcnow
from connector.storage.local import LocalStore
from tests.fakes import build, label_all, make_settings

# ------------------------------------------------------------------------- the plan


def test_unknown_strategy_parameter_and_cold_start_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown strategy 'entrpy'; did you mean 'entropy'\?"):
        resolve_plan(make_settings(tmp_path, strategy={"name": "entrpy"}))
    with pytest.raises(ConfigError, match=r"has no parameter 'betaa'; did you mean 'beta'\?"):
        resolve_plan(make_settings(tmp_path, strategy={"name": "power", "params": {"betaa": 1.0}}))
    with pytest.raises(ConfigError, match=r"strategy\.cold_start to random or"):
        resolve_plan(make_settings(tmp_path, strategy={"cold_start": "entropy"}))
    with pytest.raises(ConfigError, match=r"did you mean 'typiclust'\?"):
        resolve_plan(make_settings(tmp_path, strategy={"cold_start": "typiclus"}))


def test_overrides_win_over_settings_and_the_mc_rule_follows_the_strategy(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, strategy={"name": "entropy", "batch_size": 7})
    plan = resolve_plan(settings)
    assert (plan.strategy, plan.batch_size, plan.mc_samples) == ("entropy", 7, 1)
    plan = resolve_plan(settings, Overrides(strategy="bald", batch_size=3))
    assert (plan.strategy, plan.batch_size, plan.mc_samples) == ("bald", 3, 20)
    stochastic = resolve_plan(settings, Overrides(strategy="power", params={"base": "bald"}))
    assert stochastic.mc_samples == 20
    pinned = make_settings(tmp_path, strategy={"name": "bald"}, model={"mc_samples": 5})
    assert resolve_plan(pinned).mc_samples == 5


def test_scoring_uses_the_plans_mc_samples(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects, strategy={"name": "bald"})
    engine.step()
    label_all(labeling, truth)
    engine.step()
    assert learner.mc_samples_seen == [20, 20]  # the pool, and the labeled sample (report)


# ------------------------------------------------------------------ six phases


def test_each_phase_runs_with_its_own_phase_committed(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects)
    engine.step()
    label_all(labeling, truth)
    seen: list[tuple[str, str]] = []
    for phase, handler in list(engine._handlers.items()):

        def spy(ctx: Any, rnd: Any, _h: Any = handler, _p: Phase = phase) -> None:
            committed = engine.state.get_round(rnd.round)
            assert committed is not None
            seen.append((_p.value, committed.phase.value))
            _h(ctx, rnd)

        engine._handlers[phase] = spy
    score = learner.score

    def score_and_look(*args: Any, **kwargs: Any) -> Any:
        current = engine.state.current_round()
        assert current is not None
        seen.append(("scoring", current.phase.value))
        return score(*args, **kwargs)

    learner.score = score_and_look  # type: ignore[method-assign]
    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.WAIT
    assert seen == [
        ("INGEST", "INGEST"),
        ("TRAIN", "TRAIN"),
        ("SCORE", "SCORE"),
        ("scoring", "SCORE"),
        ("SELECT", "SELECT"),
        ("PUSH", "PUSH"),
    ]


def test_a_restart_at_select_scores_again_and_freezes_once(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    label_all(labeling, truth)
    engine.should_stop = lambda rnd: rnd.phase is Phase.SELECT
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.SELECT
    engine2, _, learner2 = build(tmp_path, objects)  # the scores lived in the old process
    engine2.ports.labeling = labeling
    rnd = engine2.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT
    assert len(learner2.mc_samples_seen) == 1
    assert len(engine2.state.selection(1)) == 20


# ------------------------------------------------------------------ failure policy


def _always_failing_push(labeling: Any) -> list[int]:
    calls: list[int] = []

    def push(tasks: Any, version: str) -> dict[str, int]:
        calls.append(len(tasks))
        raise ConnectionError("Label Studio went away")

    labeling.push = push
    return calls


def test_a_phase_that_keeps_failing_goes_to_failed_with_one_alert(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(tmp_path, objects, rounds={"max_phase_attempts": 3})
    calls = _always_failing_push(labeling)
    for attempt in (1, 2):
        rnd = engine.step()
        assert rnd is not None and rnd.phase is Phase.PUSH and rnd.attempts == attempt
    rnd = engine.step()
    assert rnd is not None and rnd.phase is Phase.FAILED and rnd.failed_phase is Phase.PUSH
    assert len(calls) == 3
    for _ in range(3):  # FAILED is a way out: no more attempts, no new round
        assert engine.step() == engine.state.current_round()
    assert len(calls) == 3 and len(engine.state.rounds()) == 1
    alerts = [a for a in engine.state.unsent_alerts() if a["kind"] == "phase_failed"]
    assert len(alerts) == 1
    message = alerts[0]["message"]
    assert "Label Studio went away" in message and "`al-connector run`" in message
    assert "resumes at PUSH" in message


def test_attempts_back_off_exponentially(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(tmp_path, objects, rounds={"retry_backoff_seconds": 60})
    calls = _always_failing_push(labeling)
    rnd = engine.step()
    assert rnd is not None and rnd.retry_at is not None
    assert timedelta(seconds=55) < rnd.retry_at - utcnow() <= timedelta(seconds=60)
    engine.step()  # inside the backoff: no new attempt
    assert len(calls) == 1
    engine.state.phase_attempt_failed(0, "x", (utcnow() - timedelta(seconds=1)).isoformat())
    rnd = engine.step()  # the wait is over: attempt 3 waits twice as long as attempt 2
    assert len(calls) == 2 and rnd is not None and rnd.attempts == 3
    assert rnd.retry_at is not None
    assert timedelta(seconds=235) < rnd.retry_at - utcnow() <= timedelta(seconds=240)


def test_a_configuration_error_fails_at_once_and_resumes_after_the_fix(
    tmp_path: Path, digit_objects: Any
) -> None:
    """The issue's case: a strategy name that no run can use, stored where the round reads
    it. The round fails at SCORE at once (no retries), with the fix in the alert; once the
    cause is fixed, a restart resumes the same round at SCORE and finishes it."""
    objects, truth = digit_objects
    engine, labeling, learner = build(tmp_path, objects, strategy={"name": "margin"})
    engine.step()
    label_all(labeling, truth)
    fit = learner.fit

    def fit_then_break_the_plan(*args: Any, **kwargs: Any) -> Any:
        engine.state.set_meta(OVERRIDE_STRATEGY, json.dumps({"name": "entrpy"}))
        return fit(*args, **kwargs)

    learner.fit = fit_then_break_the_plan  # type: ignore[method-assign]
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.FAILED
    assert rnd.failed_phase is Phase.SCORE and rnd.attempts == 0
    (alert,) = [a for a in engine.state.unsent_alerts() if a["kind"] == "phase_failed"]
    assert "did you mean 'entropy'?" in alert["message"]
    assert "configuration error is not retried" in alert["message"]
    engine.state.set_meta(OVERRIDE_STRATEGY, "")  # the fix
    engine2, _, _ = build(tmp_path, objects, strategy={"name": "margin"})
    engine2.ports.labeling = labeling
    assert engine2.recover() == [1]
    rnd = engine2.step()
    assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT
    assert rnd.strategy == "margin" and rnd.plan is not None and rnd.plan["strategy"] == "margin"
    assert learner.fits == 1, "TRAIN had committed; the resumed round does not train again"


def test_the_plan_is_re_resolved_until_the_selection_is_frozen(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects, strategy={"name": "random"})
    engine.step()
    label_all(labeling, truth)
    engine.should_stop = lambda rnd: rnd.phase is Phase.SCORE
    rnd = engine.step()
    assert rnd is not None and rnd.strategy == "random"
    # A restart with other settings before the selection is frozen: the new plan runs.
    engine2, _, _ = build(tmp_path, objects, strategy={"name": "margin", "batch_size": 5})
    engine2.ports.labeling = labeling
    rnd = engine2.step()
    assert rnd is not None and rnd.phase is Phase.WAIT
    assert (rnd.strategy, rnd.batch_size) == ("margin", 5)
    assert len([s for s in engine2.state.selection(1) if s.split == "train"]) == 5
    # After the freeze, settings no longer change the round.
    engine3, _, _ = build(tmp_path, objects, strategy={"name": "entropy"})
    assert engine3.state.get_round(1).strategy == "margin"  # type: ignore[union-attr]


# ------------------------------------------------------------------ start-up


def _settings_file(tmp_path: Path, strategy: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[label_studio]\nurl = "http://127.0.0.1:9"\ntoken = "x"\nproject_id = 1\n'
        f'[storage]\nkind = "local"\nlocal_root = "pool"\n'
        f'[strategy]\nname = "{strategy}"\n[state]\ndir = "state"\n'
    )
    (tmp_path / "pool").mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("command", [["run", "--once"], ["check"]])
def test_run_and_check_refuse_an_unknown_strategy_before_writing_anything(
    tmp_path: Path, command: list[str]
) -> None:
    config = _settings_file(tmp_path, "entrpy")
    result = CliRunner().invoke(main, [*command, "--config", str(config)])
    assert result.exit_code != 0
    assert "unknown strategy 'entrpy'; did you mean 'entropy'?" in result.output
    assert not (tmp_path / "state").exists()


def test_a_local_pool_trains_from_its_own_files_not_cache_copies(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = digit_objects
    pool = tmp_path / "pool"
    pool.mkdir()
    for key, data in objects.items():
        (pool / key).write_bytes(data)
    engine, labeling, learner = build(tmp_path, objects)
    engine.ports.store = LocalStore(pool)
    trained_on: list[list[Any]] = []
    fit = learner.fit
    learner.fit = lambda images, *a, **k: trained_on.append(list(images)) or fit(images, *a, **k)  # type: ignore[method-assign]
    engine.step()
    label_all(labeling, truth)
    rnd = engine.step()
    assert rnd is not None and rnd.metrics["trained"]
    assert trained_on and all(Path(p).parent == pool for p in trained_on[0])
    assert not [p for p in (tmp_path / "state" / "cache" / "objects").rglob("*") if p.is_file()]
