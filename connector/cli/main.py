"""The ``al-connector`` command: run, check, status, simulate, demo, settings-doc; the
admin commands (round, rounds, items, export, audit) live in ``cli.admin`` and
``cli.items``.

Exit codes: 0 ok, 1 a failed check or a runtime error, 2 bad settings or usage.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from connector.contracts.errors import ConfigError, ConnectorError
from connector.settings import Settings, load_settings, settings_reference

log = logging.getLogger("connector")

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Settings TOML file (default: $ALC_CONFIG). Environment ALC_* variables override it.",
)


def no_state(path: Path) -> str:
    """A missing state db is most often a command run without the daemon's settings."""
    return (
        f"no state at {path}; pass --config with the daemon's settings file (its state.dir "
        "holds the state), or start the daemon first: `al-connector run --config FILE`"
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Label Studio's SDK, botocore and moto's server are chatty at INFO; warnings still show.
    for noisy in ("httpx", "botocore", "urllib3", "werkzeug", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").addFilter(_SkipExpectedOverlap())


class _SkipExpectedOverlap(logging.Filter):
    """Jobs never overlap themselves by design; a skipped tick is not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def _load(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.version_option(package_name="al-connector")
def main(log_level: str) -> None:
    """Active learning between Label Studio and an S3-compatible pool of images."""
    setup_logging(log_level)


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Run every job once and exit (tests, cron).")
def run(config_path: Path | None, once: bool) -> None:
    """Run the daemon: poll, train, score, select, push, watch; round after round."""
    from connector.app import build_app_when_up
    from connector.cli.progress import terminal_progress
    from connector.ops.daemon import Daemon

    settings = _load(config_path)
    try:
        app = build_app_when_up(settings)  # waits for services that are not up yet
        daemon = Daemon(settings, app.engine)
        shown = terminal_progress()
        if shown is not None:
            bars, app.engine.ctx.progress = shown
            bars.start()
        try:
            if once:
                status = daemon.run_once()
                click.echo(json.dumps(status, indent=2, default=str))
                return
            daemon.run()
        finally:
            if shown is not None:
                shown[0].stop()
    except ConnectorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate settings and reach every service; exit non-zero with the fix named."""
    from connector.app import check_unlabeled_pool, classes_for, open_labeling, open_store

    settings = _load(config_path)
    problems = 0

    def report(name: str, fn: Any) -> Any:
        nonlocal problems
        try:
            result = fn()
        except ConnectorError as exc:
            problems += 1
            click.echo(f"FAIL {name}: {exc}")
            return None
        click.echo(f"ok   {name}: {result}")
        return result

    click.echo("ok   settings: valid")
    plan = report("round plan", lambda: _describe_plan(settings))
    if plan is None:
        sys.exit(2)
    store = report("object storage", lambda: _describe_store(open_store(settings)))
    labeling = report("label studio", lambda: open_labeling(settings)[1])
    if labeling is not None:
        click.echo(f"     classes: {', '.join(classes_for(settings, labeling))}")
    report("state dir", lambda: _check_state_dir(settings))
    report("training", lambda: _describe_training(settings))
    if store is not None:
        report("unlabeled pool", lambda: check_unlabeled_pool(settings, open_store(settings)))
    report("scoring engine", lambda: _check_scoring(settings))
    if store is None or labeling is None or problems:
        sys.exit(1)


def _describe_plan(settings: Settings) -> str:
    from connector.rounds.plan import resolve_plan

    return resolve_plan(settings).describe()


def _describe_training(settings: Settings) -> str:
    """The model, where it trains, and what it takes from the unlabeled pool."""
    from connector.learning.device import training_device

    m = settings.model
    device = training_device(m.device).type
    pool = []
    if m.semi_supervised != "none":
        pool.append(f"{m.semi_supervised} on up to {m.semi_max_unlabeled} pool images a run")
    if m.pretrain != "none":
        every = f"every {m.pretrain_every_rounds} rounds" if m.pretrain_every_rounds else "once"
        pool.append(f"{m.pretrain} pre-training ({m.pretrain_steps} steps, {every})")
    uses = "; ".join(pool) or "labels only"
    return f"{m.arch}, {m.image_size} px, on {device} (model.device = {m.device!r}); {uses}"


def _describe_store(store: Any) -> str:
    info = store.check()
    return f"{store.describe()} {info}"


def _check_scoring(settings: Settings) -> str:
    """Where SCORE runs; with Ray, that it is installed and its cluster answers."""
    if settings.scoring.engine == "local":
        return "local: the daemon scores the pool in its own process"
    from connector.app import store_recipe
    from connector.scoring import import_ray_engine

    s = settings
    scorer = import_ray_engine().RayScorer(
        s.scoring,
        store_recipe(s),
        batch_size=s.strategy.score_batch_size,
        read_concurrency=s.storage.read_concurrency,
    )
    return str(scorer.check())


def _check_state_dir(settings: Settings) -> str:
    path = settings.state.dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"state.dir {path} is not writable ({exc.strerror}); fix it") from None
    return f"{path} writable"


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Where the rounds stand: the phase and its age, paused or stopped (and by which
    criterion), open alerts, the queue's age, the last rounds' accuracy."""
    from connector.rounds import status as status_view
    from connector.state import StateDB

    settings = _load(config_path)
    if not settings.db_path().exists():
        click.echo(f"error: {no_state(settings.db_path())}", err=True)
        sys.exit(1)
    out = status_view.describe(settings, StateDB(settings.db_path()))
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    for line in status_view.lines(out):
        click.echo(line)


@main.command("settings-doc")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None)
def settings_doc(output: Path | None) -> None:
    """Print (or write) the settings reference, generated from the settings model."""
    text = settings_reference()
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")


def _register_optional() -> None:
    from connector.cli.admin import round_group, rounds_group
    from connector.cli.alerts import alerts_group
    from connector.cli.demo import demo_cmd
    from connector.cli.items import audit_cmd, export_cmd, items_group
    from connector.cli.simulate import simulate_cmd

    main.add_command(simulate_cmd, "simulate")
    main.add_command(demo_cmd, "demo")
    for command in (round_group, rounds_group, items_group, export_cmd, audit_cmd, alerts_group):
        main.add_command(command)


_register_optional()
