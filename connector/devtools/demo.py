"""``al-connector demo``: the whole loop on this machine, in a few minutes.

Starts a local Label Studio (its own virtual environment) and a local S3-compatible
server (SeaweedFS, ``weed server -s3``), loads scikit-learn's digits as PNGs into the bucket,
creates a project whose tasks resolve ``s3://`` URLs through a source-storage
connection, and runs the real daemon while a simulated annotator labels the pushed
tasks through the Label Studio API from ground truth (with some skips and a delay).
Round by round it prints the labels so far and the validation accuracy, next to a
random-sampling baseline: the same round engine with the ``random`` strategy, labeled by
an oracle from ground truth over a local copy of the pool (so it draws the same
validation split and cold-start batch), one round per demo round.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
import numpy as np

from connector.app import build_app
from connector.contracts.errors import ConnectorError
from connector.devtools.datasets import DIGIT_CLASSES, write_digits
from connector.ops.daemon import Daemon
from connector.rounds import report
from connector.rounds.engine import RoundEngine
from connector.settings import Settings
from connector.state import Phase

log = logging.getLogger(__name__)


class SimulatedAnnotator(threading.Thread):
    """Labels open connector tasks from ground truth, in the order Label Studio would
    serve them (priority), skipping a fraction and pausing between tasks."""

    def __init__(
        self,
        adapter: Any,
        truth: dict[str, str],
        *,
        skip_rate: float,
        delay_s: float,
        seed: int = 0,
    ) -> None:
        super().__init__(name="demo-annotator", daemon=True)
        self.adapter = adapter
        self.truth = truth
        self.skip_rate = skip_rate
        self.delay_s = delay_s
        self.rng = np.random.default_rng(seed)
        self.done: set[str] = set()
        self.labeled = 0
        self.skipped = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                open_tasks = self.adapter.open_tasks()
            except ConnectorError as exc:
                log.warning("annotator: %s", exc)
                self.stop_event.wait(2.0)
                continue
            todo = [t for t in open_tasks if t[0] not in self.done]
            if not todo:
                self.stop_event.wait(1.0)
                continue
            for item_id, task_id in todo:
                if self.stop_event.is_set():
                    return
                if self.rng.random() < self.skip_rate:
                    self.adapter.skip_task(task_id)
                    self.skipped += 1
                else:
                    self.adapter.annotate_task(task_id, self.truth[item_id])
                    self.labeled += 1
                self.done.add(item_id)
                self.stop_event.wait(self.delay_s)


def _import_with_signals_held() -> None:
    """Import what the rounds need (torch, the learner, Label Studio's SDK) with SIGINT
    and SIGTERM held back.

    A KeyboardInterrupt raised inside torch's import runs into its C++ module set-up,
    which cannot pass it on: the process aborts (``terminate called after throwing an
    instance of 'pybind11::error_already_set'``, seen in a Ctrl-C sweep of the demo) and
    its servers are left behind. Held back, a Ctrl-C pressed meanwhile arrives once the
    imports are done, in Python code, and stops the demo as usual.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import label_studio_sdk  # noqa: F401

        import connector.learning.torch_learner
        import connector.simulation  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _CtrlC:
    """The demo's SIGINT/SIGTERM handler until the rounds start: raise KeyboardInterrupt
    (which unwinds the set-up, stopping the servers started so far) and remember it.

    Python drops an exception raised where it cannot propagate (a ``__del__`` that the
    garbage collector ran in the middle of the set-up, say), so a Ctrl-C could vanish:
    the sweep behind issue 15's CI failure saw one demo run on after it. ``check`` raises
    again at each step of the set-up, so a dropped one still stops the demo.
    """

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


@dataclass
class _DemoDaemon(Daemon):
    """The daemon with the demo's signal policy. A person pressing Ctrl-C in a demo wants
    it over, servers and all, so the first SIGINT or SIGTERM stops now (``stop_now``);
    the daemon's own two-stage stop would wait for a training run to finish."""

    stop_now: Callable[[], object] = field(default=lambda: None)
    #: Whether a Ctrl-C came during the set-up (``_CtrlC.pressed``).
    pressed: Callable[[], bool] = field(default=lambda: False)

    def _install_signals(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            self.stop_now()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
        if self.pressed():  # one that came as the handlers changed hands
            self.stop_now()


def run_demo(
    rounds: int,
    batch_size: int,
    validation_size: int,
    strategy: str,
    images: int,
    skip_rate: float,
    delay: float,
    workdir: Path | None,
    label_studio_bin: Path | None,
    keep_running: bool,
    verbose: bool,
) -> None:
    """Run the loop end to end on a local Label Studio and S3 server with digits (the
    ``al-connector demo`` command; its options are documented there)."""
    from connector.devtools.labelstudio_server import find_label_studio, start_label_studio
    from connector.devtools.s3_server import start_s3_server
    from connector.storage.s3 import S3Store

    bin_path = find_label_studio(label_studio_bin)
    root = Path(tempfile.mkdtemp(prefix="al-demo-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    ctrl_c = _CtrlC()
    with ExitStack() as stack:
        # SIGTERM as Ctrl-C: either unwinds this stack, which stops every server started.
        stack.callback(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        stack.callback(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        signal.signal(signal.SIGTERM, ctrl_c)
        signal.signal(signal.SIGINT, ctrl_c)
        _log_to_file(root / "demo.log", verbose)
        # The folder is kept: the report, plots and log it ends by pointing at live there.
        click.echo(f"demo folder: {root}")
        pool_dir = root / "pool"
        written = write_digits(pool_dir, limit=images, seed=0)
        (pool_dir / "labels.csv").replace(root / "ground_truth.csv")
        truth = {w.key: w.label for w in written}
        click.echo(f"wrote {len(written)} digit PNGs; ground truth in {root / 'ground_truth.csv'}")

        _import_with_signals_held()  # before any server starts: nothing to leave behind
        s3 = start_s3_server(root / "s3")
        stack.callback(s3.stop)
        bucket = "al-demo-pool"
        creds = {"access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key}
        store = S3Store(
            bucket,
            "digits/",
            endpoint_url=s3.url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
        )
        store.create_bucket()
        store.upload_dir(pool_dir)
        click.echo(f"S3 server on {s3.url}: bucket {bucket} holds the pool")

        click.echo("starting Label Studio (about a minute the first time, seconds after)...")
        template = Path.home() / ".cache" / "al-connector" / "label-studio-template"
        template.mkdir(parents=True, exist_ok=True)
        ls = start_label_studio(bin_path, root / "label-studio", template_dir=template)
        stack.callback(ls.stop)
        click.echo(f"Label Studio on {ls.url} (log: {ls.log_path})")
        ctrl_c.check()

        settings = Settings(
            **{
                "label_studio": {
                    "url": ls.url,
                    "token": ls.legacy_token,
                    "project_title": "al-demo digits",
                },
                "storage": {
                    "kind": "s3",
                    "bucket": bucket,
                    "prefix": "digits/",
                    "endpoint_url": s3.url,
                    "region": "us-east-1",
                    **creds,
                },
                "labels": {"classes": list(DIGIT_CLASSES)},
                "strategy": {"name": strategy, "batch_size": batch_size, "cold_start": "random"},
                "validation": {"size": validation_size},
                "rounds": {"min_labeled_fraction": 0.9},
                "stopping": {"max_rounds": rounds + 1},
                "polling": {
                    "label_studio_seconds": 1.0,
                    "storage_seconds": 30.0,
                    "watch_seconds": 5.0,
                    "overlap_seconds": 5.0,
                },
                "state": {"dir": str(root / "state")},
                "server": {"port": None},
            }
        )
        app = build_app(settings)
        ctrl_c.check()
        annotator = SimulatedAnnotator(
            app.engine.ports.labeling, truth, skip_rate=skip_rate, delay_s=delay
        )
        annotator.start()
        stack.callback(annotator.stop_event.set)
        daemon = _DemoDaemon(
            settings,
            app.engine,
            stop_now=lambda: _stop_now(stack, root, annotator),
            pressed=lambda: ctrl_c.pressed,
        )
        baseline = _random_baseline(settings, pool_dir, truth, root / "baseline")
        ctrl_c.check()
        monitor = threading.Thread(
            target=_monitor, args=(daemon, annotator, baseline, rounds), daemon=True
        )
        monitor.start()
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        try:
            daemon.run()  # returns after the monitor stops it; a Ctrl-C ends the process
        finally:
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
        annotator.stop_event.set()
        summary = report.summarise(app.engine.state, settings.rounds_dir(), settings.stopping)
        click.echo(f"\nreport: {settings.rounds_dir() / 'report.json'}")
        if (settings.rounds_dir() / "learning_curve.png").exists():
            click.echo(f"learning curve: {settings.rounds_dir() / 'learning_curve.png'}")
        click.echo(f"per-round selections and score histograms: {settings.rounds_dir()}/NNNN/")
        click.echo(f"stopping signals: {_describe_stopping(summary['stopping'])}")
        click.echo(f"full log: {root / 'demo.log'}")
        click.echo(f"everything is in {root}; delete the folder when you are done with it")
        if keep_running:
            try:  # entered before the prompt: a Ctrl-C the moment it shows lands here too
                click.echo(
                    f"\nLabel Studio stays up at {ls.url}  login: {ls.username} / "
                    f"{ls.password}\nPress Ctrl-C to stop everything."
                )
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                # Leaving the with-block stops the annotator and every server, newest first.
                click.echo("\nstopping the demo and its servers...")
    if keep_running:
        click.echo("stopped")


def _stop_now(stack: ExitStack, root: Path, annotator: SimulatedAnnotator) -> NoReturn:
    """Ctrl-C while rounds run: stop every server the demo started, then exit at once.

    The exit skips the daemon's safe point on purpose: a training run in a worker thread
    would otherwise hold the process for minutes. The state db is consistent at every
    commit, so nothing written is lost.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the servers get their own timeouts
    click.echo("\nCtrl-C: stopping the demo and its servers...")
    annotator.stop_event.set()
    try:
        stack.close()  # everything that was started, newest first
    except Exception:  # report it, and still exit: a person asked to stop
        log.exception("stopping a demo server failed")
    click.echo(f"stopped; what the demo wrote is in {root}")
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(130)


def _describe_stopping(stopping: dict[str, Any]) -> str:
    """``report.stopping_signals`` in words, e.g. ``accuracy still improving (+0.012 over
    the last rounds; 5 rounds with a validation accuracy)``."""
    n = stopping.get("rounds_with_accuracy", 0)
    if "plateau" not in stopping:
        return f"too few rounds to judge a plateau ({n} with a validation accuracy)"
    verdict = (
        "validation accuracy has plateaued: more labels add little"
        if stopping["plateau"]
        else "validation accuracy is still improving"
    )
    gain = float(stopping.get("recent_gain") or 0.0)
    return f"{verdict} ({gain:+.3f} over the last rounds; {n} rounds with an accuracy)"


def _log_to_file(path: Path, verbose: bool) -> None:
    """Everything to ``path``; the console keeps the table (and warnings, or all with
    ``verbose``)."""
    root_logger = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for existing in root_logger.handlers:
        existing.setLevel(logging.INFO if verbose else logging.WARNING)
    root_logger.addHandler(handler)


def _random_baseline(
    settings: Settings, pool_dir: Path, truth: dict[str, str], state_dir: Path
) -> RoundEngine:
    """The round engine with the random strategy over a local copy of the pool, labeled
    by an oracle: what the same number of rounds would give without active learning."""
    from connector.learning.torch_learner import TorchLearner
    from connector.simulation import oracle_engine
    from connector.storage.local import LocalStore

    base = settings.model_copy(
        update={
            "strategy": settings.strategy.model_copy(update={"name": "random", "params": {}}),
            "storage": settings.storage.model_copy(
                update={"kind": "local", "local_root": pool_dir}
            ),
            "state": settings.state.model_copy(update={"dir": state_dir}),
        }
    )
    engine, _ = oracle_engine(base, LocalStore(pool_dir), truth, TorchLearner.from_settings(base))
    engine.list_pool(full=True)
    return engine


def _monitor(
    daemon: Daemon, annotator: SimulatedAnnotator, baseline: RoundEngine, rounds: int
) -> None:
    """Print each trained round next to the random baseline; stop the daemon at the end."""
    engine = daemon.engine
    reported: set[int] = set()
    click.echo(f"{'round':>5} {'labels':>7} {'val. acc.':>10} {'random':>14}  model version")
    while not daemon.stop_event.is_set():
        for rnd in engine.state.rounds():
            if rnd.round in reported or rnd.phase not in (Phase.WAIT, Phase.DONE, Phase.STOPPED):
                continue
            reported.add(rnd.round)
            base = _baseline_round(baseline, rnd.round)
            _record_baseline(engine, baseline)
            n_train = int(rnd.metrics.get("n_train") or 0)
            acc = (rnd.metrics.get("validation") or {}).get("accuracy")
            acc_s = "-" if acc is None else f"{acc:.3f}"
            click.echo(
                f"{rnd.round:>5} {n_train:>7} {acc_s:>10} {base:>14}  "
                f"{rnd.model_version or '(cold start: validation split + random batch)'}"
            )
            if rnd.round >= rounds:
                daemon.stop_event.set()
                return
        time.sleep(1.0)
    _ = annotator


def _record_baseline(engine: RoundEngine, baseline: RoundEngine) -> None:
    """The baseline's learning curve, where the report's learning curve finds it."""
    points = [
        [int(r.metrics["n_train"]), float(r.metrics["validation"]["accuracy"])]
        for r in baseline.state.rounds()
        if r.metrics.get("n_train")
        and (r.metrics.get("validation") or {}).get("accuracy") is not None
    ]
    engine.state.set_meta(report.RANDOM_BASELINE, json.dumps(points))


def _baseline_round(baseline: RoundEngine, number: int) -> str:
    """Step the baseline to round ``number``; its accuracy and labels, e.g. ``0.912 (60)``."""
    rnd = baseline.state.current_round()
    while rnd is None or rnd.round < number:
        rnd = baseline.step()
        if rnd is None or rnd.phase not in (Phase.WAIT, Phase.STOPPED):
            return "-"
    acc = (rnd.metrics.get("validation") or {}).get("accuracy")
    return "-" if acc is None else f"{acc:.3f} ({int(rnd.metrics.get('n_train') or 0)})"
