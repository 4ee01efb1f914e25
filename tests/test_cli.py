"""The command line against the real servers: check, run --once, status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli.main import main
from tests.fixtures.s3 import upload_digits, write_server_settings


def write_settings(tmp_path: Path, ls_url: str, endpoint: str, bucket: str) -> Path:
    extra = '[strategy]\nname = "margin"\nbatch_size = 10\n'
    return write_server_settings(tmp_path, ls_url, endpoint, bucket, title="alc-cli", extra=extra)


@pytest.mark.labelstudio
@pytest.mark.s3
def test_check_run_once_and_status(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: Any,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=60)
    config = write_settings(tmp_path, label_studio.url, s3_server, s3_bucket)
    env = {"ALC_LABEL_STUDIO__TOKEN": label_studio.legacy_token}
    runner = CliRunner()
    checked = runner.invoke(main, ["check", "--config", str(config)], env=env)
    assert checked.exit_code == 0, checked.output
    assert "ok   object storage" in checked.output and "ok   label studio" in checked.output
    ran = runner.invoke(main, ["run", "--once", "--config", str(config)], env=env)
    assert ran.exit_code == 0, ran.output
    status = json.loads(ran.output[ran.output.index("{") :])
    assert status["round"]["number"] == 0 and status["round"]["batch_total"] == 20
    shown = runner.invoke(main, ["status", "--config", str(config), "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["items"]["queued"] == 20


@pytest.mark.labelstudio
@pytest.mark.s3
def test_check_names_the_fix_for_a_wrong_token(
    tmp_path: Path, label_studio: Any, s3_server: str, s3_bucket: str
) -> None:
    config = write_settings(tmp_path, label_studio.url, s3_server, s3_bucket)
    result = CliRunner().invoke(
        main, ["check", "--config", str(config)], env={"ALC_LABEL_STUDIO__TOKEN": "not-a-token"}
    )
    assert result.exit_code == 1
    assert "FAIL label studio" in result.output
    assert "token" in result.output.lower()
    assert "not-a-token" not in result.output


def test_bad_settings_exit_2_with_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[strategy]\nbatch_size = 0\n")
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 2
    assert "ALC_STRATEGY__BATCH_SIZE" in result.output


def test_status_without_state_names_the_config_option(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    result = CliRunner().invoke(main, ["status", "--config", str(config)], env={"ALC_CONFIG": ""})
    assert result.exit_code == 1
    assert "no state at" in result.output and "--config" in result.output, result.output


def test_simulate_table_prints_accuracy_with_three_decimals() -> None:
    from rich.console import Console

    from connector.cli.simulate import summary_table

    row = {
        "strategy": "margin",
        "aubc_mean": 0.81234,
        "aubc_std": 0.01234,
        "final_accuracy_mean": 0.912345,
        "labels_to_90_mean": 40.0,
        "labels_to_90_reached": 1,
        "labels_to_95_mean": None,
        "labels_to_95_reached": 0,
        "n_seeds": 1,
        "select_seconds_mean": 0.01,
    }
    console = Console(width=200, record=True)
    console.print(summary_table({"summary": [row]}))
    text = console.export_text()
    assert "0.912" in text and "0.9123" not in text, text


def test_demo_prints_its_stopping_signals_in_words() -> None:
    from connector.devtools.demo import _describe_stopping

    few = _describe_stopping({"rounds_with_accuracy": 2})
    improving = _describe_stopping(
        {"rounds_with_accuracy": 5, "recent_gain": 0.0123456, "plateau": False}
    )
    flat = _describe_stopping({"rounds_with_accuracy": 6, "recent_gain": 0.001, "plateau": True})
    assert few == "too few rounds to judge a plateau (2 with a validation accuracy)"
    assert improving.startswith("validation accuracy is still improving (+0.012 ")
    assert flat.startswith("validation accuracy has plateaued")
    for text in (few, improving, flat):
        assert "{" not in text and "True" not in text and "_" not in text, text


def test_a_ctrl_c_dropped_during_the_demo_set_up_still_stops_it() -> None:
    """Python drops an exception raised where it cannot propagate (a ``__del__`` run by
    the garbage collector): the demo's handler remembers the Ctrl-C, so the next step of
    the set-up, or the daemon as it takes the signals over, stops the demo anyway."""
    import signal

    from connector.devtools.demo import _CtrlC, _DemoDaemon
    from connector.settings import Settings

    ctrl_c = _CtrlC()
    ctrl_c.check()  # nothing pressed: the set-up goes on
    with pytest.raises(KeyboardInterrupt):
        ctrl_c(signal.SIGINT, None)  # the handler raises, and a __del__ would drop it
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()  # the next step of the set-up raises it again
    stopped: list[bool] = []
    daemon = _DemoDaemon(
        Settings(), None,  # type: ignore[arg-type]  # the engine is not used here
        stop_now=lambda: stopped.append(True), pressed=lambda: ctrl_c.pressed,
    )  # fmt: skip
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        daemon._install_signals()
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert stopped == [True]
