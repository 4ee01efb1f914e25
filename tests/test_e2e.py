"""End to end on real servers: Label Studio (its own venv) and moto's S3 over HTTP.

The real daemon (``Daemon.run_once``, the same jobs the scheduler runs) drives rounds
with the real torch learner while a test annotator labels the pushed tasks through the
Label Studio API from ground truth, with some skips.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.app import App, build_app
from connector.devtools.datasets import DIGIT_CLASSES, LabeledImage
from connector.ops.daemon import Daemon
from connector.settings import Settings
from connector.state import Phase
from tests.fixtures.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION, upload_digits

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow]


def e2e_settings(
    tmp_path: Path, ls_url: str, token: str, endpoint: str, bucket: str, **over: Any
) -> Settings:
    data: dict[str, Any] = {
        "label_studio": {
            "url": ls_url,
            "token": token,
            "project_title": f"alc-e2e-{uuid.uuid4().hex[:8]}",
        },
        "storage": {
            "kind": "s3",
            "bucket": bucket,
            "prefix": "pool/",
            "endpoint_url": endpoint,
            "region": REGION,
            "access_key_id": FAKE_ACCESS_KEY_ID,
            "secret_access_key": FAKE_SECRET_ACCESS_KEY,
        },
        "labels": {"classes": list(DIGIT_CLASSES)},
        "strategy": {"name": "margin", "batch_size": 30},
        "validation": {"size": 60},
        "rounds": {"min_labeled_fraction": 1.0},
        "model": {"epochs": None},
        "polling": {"overlap_seconds": 2.0},
        "state": {"dir": str(tmp_path / "state")},
        "server": {"port": None},
    }
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return Settings(**data)


def field(obj: Any, name: str) -> Any:
    """A field of an SDK record, whether the SDK gives it as a dict or a model."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def annotate_open(
    app: App, truth: dict[str, str], skip_every: int = 0, limit: int | None = None
) -> tuple[int, int]:
    """Label (or skip) open tasks in priority order; returns (labeled, skipped)."""
    adapter: Any = app.engine.ports.labeling
    labeled = skipped = 0
    for n, (item_id, task_id) in enumerate(adapter.open_tasks()):
        if limit is not None and labeled + skipped >= limit:
            break
        if skip_every and n % skip_every == skip_every - 1:
            adapter.skip_task(task_id)
            skipped += 1
        else:
            adapter.annotate_task(task_id, truth[item_id])
            labeled += 1
    return labeled, skipped


@pytest.fixture
def pool(
    s3_client: Any, s3_bucket: str, digits_dir: tuple[Path, list[LabeledImage]]
) -> tuple[str, dict[str, str]]:
    keys = upload_digits(s3_client, s3_bucket, "pool/", digits_dir)
    truth = {img.key: img.label for img in digits_dir[1]}
    return s3_bucket, {k: truth[k] for k in keys}


def test_daemon_rounds_end_to_end(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    pool: tuple[str, dict[str, str]],
    ls_client: Any,
) -> None:
    bucket, truth = pool
    settings = e2e_settings(
        tmp_path, label_studio.url, label_studio.legacy_token, s3_server, bucket
    )
    app = build_app(settings)
    daemon = Daemon(settings, app.engine)
    status = daemon.run_once()
    assert status["round"]["number"] == 0 and status["round"]["batch_total"] == 90
    accuracies: list[float] = []
    for expected in (1, 2, 3):
        annotate_open(app, truth, skip_every=10)
        status = daemon.run_once()
        assert status["round"]["number"] == expected, status
        assert status["round"]["phase"] == "WAIT"
        rnd = app.engine.state.get_round(expected)
        assert rnd is not None
        accuracies.append(rnd.metrics["validation"]["accuracy"])
    project = app.project.project_id
    tasks = list(ls_client.tasks.list(project=project, fields="all"))
    item_ids = [t.data["al_item_id"] for t in tasks]
    # Every pushed item is unique, and every push is a task.
    assert len(item_ids) == len(set(item_ids)) == 90 + 3 * 30
    # Labels in the state db match the annotations in Label Studio.
    for task in tasks:
        item = app.engine.state.item(task.data["al_item_id"])
        assert item is not None and item.task_id == task.id
        finished = [a for a in (task.annotations or []) if not field(a, "was_cancelled")]
        if finished:
            assert item.status == "labeled"
            assert item.label == field(finished[-1], "result")[0]["value"]["choices"][0]
        elif task.annotations:
            assert item.status == "skipped"
    # The newest round's tasks carry predictions of its model version.
    last = app.engine.state.get_round(3)
    assert last is not None and last.model_version is not None
    newest = [t for t in tasks if t.data["al_round"] == 3]
    assert newest and all(
        any(field(p, "model_version") == last.model_version for p in (t.predictions or []))
        for t in newest
    )
    # Validation accuracy rises with labels (small CNN on digits, 60 validation items).
    assert accuracies[-1] > accuracies[0], accuracies
    assert accuracies[-1] > 0.6, accuracies
    for n in range(4):
        files = {p.name for p in (settings.rounds_dir() / f"{n:04d}").iterdir()}
        assert {"selection.json", "diagnostics.json"} <= files
        if n > 0:
            assert {"model.pt", "scores.png"} <= files, files
    assert (settings.rounds_dir() / "report.json").exists()


def test_labels_made_during_training_are_not_lost(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    pool: tuple[str, dict[str, str]],
) -> None:
    bucket, truth = pool
    settings = e2e_settings(
        tmp_path,
        label_studio.url,
        label_studio.legacy_token,
        s3_server,
        bucket,
        validation={"size": 20},
        strategy={"batch_size": 20},
        rounds={"min_labeled_fraction": 0.5},
    )
    app = build_app(settings)
    daemon = Daemon(settings, app.engine)
    daemon.run_once()
    annotate_open(app, truth, limit=30)  # 30 of 40: enough for a round, not all
    fit: Callable[..., Any] = app.engine.learner.fit
    during: list[tuple[int, int]] = []

    def fit_while_annotating(*args: Any, **kwargs: Any) -> Any:
        during.append(annotate_open(app, truth))  # the rest, while the model trains
        return fit(*args, **kwargs)

    app.engine.learner.fit = fit_while_annotating  # type: ignore[method-assign]
    daemon.run_once()
    assert during and during[0][0] == 10
    rnd = app.engine.state.get_round(1)
    assert rnd is not None and rnd.phase is Phase.WAIT
    daemon.run_once()  # the poll job picks up what was labeled during training
    counts = app.engine.state.count_items()
    assert counts["labeled"] == 40
    events = Counter(
        r["item_id"]
        for r in app.engine.state.query("SELECT item_id FROM label_events WHERE status = 'labeled'")
    )
    assert set(events.values()) == {1}, "each annotation is ingested exactly once"
    assert app.engine.state.labels_since(1) == 10, "the late labels wait for the next round"
