"""The Label Studio adapter against the real server (see tests/fixtures/labelstudio.py)."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio

from connector.contracts.errors import AuthError, ConfigError, ServiceUnavailable
from connector.contracts.ports import TaskToPush
from connector.devtools.datasets import DIGIT_CLASSES
from connector.labelstudio.adapter import LabelStudioAdapter
from connector.labelstudio.config import image_classification_config, parse_label_config
from connector.labelstudio.query import (
    MAX_QUERY_CHARS,
    dm_datetime,
    dm_filter,
    dm_query,
    id_chunks,
)
from connector.labelstudio.resolve import resolve_task
from tests.fixtures.labelstudio import (
    LabelStudioHandle,
    LabelStudioProject,
    annotate,
    skip,
)

# Tests that use the server fixtures are marked ``labelstudio`` by the fixture plugin;
# the pure ones below the server tests run without a server.


def _tasks(n: int, *, round_: int = 1, start: int = 0) -> list[TaskToPush]:
    return [
        TaskToPush(
            item_id=f"pool/digit-{i:05d}.png",
            image_url=f"s3://pool-bucket/pool/digit-{i:05d}.png",
            round=round_,
            split="validation" if i % 3 == 0 else "train",
            priority=i - start,
            predicted_label=str(i % 10),
            confidence=0.5 + (i % 5) / 10,
        )
        for i in range(start, start + n)
    ]


def _all_tasks(client: LabelStudio, project_id: int) -> list[Any]:
    return list(client.tasks.list(project=project_id, fields="all", page_size=1000))


def _prediction(task: Any) -> dict[str, Any]:
    (pred,) = task.predictions
    return pred if isinstance(pred, dict) else dict(pred.model_dump())


def _wait_tick() -> None:
    # updated_at has microseconds, but make "after the watermark" unambiguous.
    time.sleep(0.05)


# ---------------------------------------------------------------- check_project


def test_check_project_accepts_matching_config(ls_project: LabelStudioProject) -> None:
    info = ls_project.adapter().check_project(list(DIGIT_CLASSES))
    assert info.project_id == ls_project.id
    assert info.title == ls_project.title
    assert info.choices == list(DIGIT_CLASSES)
    assert info.image_field == "image" and info.choices_name == "label"
    assert info.task_count == 0
    assert info.warnings == []


def test_check_project_unknown_class_names_the_fix(ls_project: LabelStudioProject) -> None:
    with pytest.raises(ConfigError) as err:
        ls_project.adapter().check_project(["0", "1", "cat"])
    assert str(err.value) == (
        "label 'cat' is not a Choice in the project's label config "
        "(choices: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9); add it or map it in [labels]"
    )


def test_check_project_label_map(ls_project: LabelStudioProject) -> None:
    classes = ["zero", *DIGIT_CLASSES[1:]]
    info = ls_project.adapter(label_map={"0": "zero"}).check_project(classes)
    assert info.warnings == []
    with pytest.raises(ConfigError, match=r"labels.map maps 'cat', which is not a Choice"):
        ls_project.adapter(label_map={"cat": "zero"}).check_project(classes)
    # A choice that leads to no class is allowed, with a warning (its labels are invalid).
    info = ls_project.adapter().check_project(list(DIGIT_CLASSES[:9]))
    assert any("'9'" in w and "quarantined" in w for w in info.warnings)


def test_check_project_wrong_fields(ls_project: LabelStudioProject) -> None:
    with pytest.raises(ConfigError, match=r'no <Image value="\$picture">.*image_field'):
        ls_project.adapter(image_field="picture").check_project([])
    with pytest.raises(ConfigError, match=r'no <Choices name="digit">.*Choices found: label'):
        ls_project.adapter(choices_name="digit").check_project([])


def test_check_project_choices_not_on_image(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    config = image_classification_config(DIGIT_CLASSES).replace(
        'toName="image"', 'toName="caption"'
    )
    config = config.replace("</View>", '  <Text name="caption" value="$caption"/>\n</View>')
    ls_client.projects.update(id=ls_project.id, label_config=config)
    with pytest.raises(ConfigError, match=r'points to caption, not to the Image tag "image"'):
        ls_project.adapter().check_project([])


def test_missing_project_is_a_config_error(ls_project: LabelStudioProject) -> None:
    adapter = LabelStudioAdapter(ls_project.url, ls_project.token, 999_999, retry_attempts=1)
    with pytest.raises(ConfigError, match=r"project 999999 does not exist.*project_id"):
        adapter.check_project([])


# ---------------------------------------------------------------- push


def test_push_imports_tasks_with_predictions(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter(import_chunk_size=3)
    tasks = _tasks(7)
    mapping = adapter.push(tasks, "r1-entropy")
    assert sorted(mapping) == sorted(t.item_id for t in tasks)
    stored = {t.id: t for t in _all_tasks(ls_client, ls_project.id)}
    assert sorted(stored) == sorted(mapping.values())
    for task in tasks:
        got = stored[mapping[task.item_id]]
        assert got.data == {
            "image": task.image_url,
            "al_item_id": task.item_id,
            "al_round": 1,
            "al_split": task.split,
            "al_priority": task.priority,
        }
        pred = _prediction(got)
        assert pred["model_version"] == "r1-entropy"
        assert pred["score"] == pytest.approx(task.confidence)  # the model's, not a rank
        (region,) = pred["result"]
        assert region["value"] == {"choices": [task.predicted_label]}
        assert region["score"] == pytest.approx(task.confidence)
    # imported in priority order: task ids rise with priority (the stream's order)
    by_priority = sorted(tasks, key=lambda t: t.priority)
    ids = [mapping[t.item_id] for t in by_priority]
    assert ids == sorted(ids)


def test_missing_tasks_sees_a_deleted_task_whose_id_was_given_to_another_item(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter()
    first = adapter.push(_tasks(3), "r1")
    newest_item = max(first, key=lambda k: first[k])
    newest = first[newest_item]
    kept = {t: i for i, t in first.items() if t != newest}
    assert adapter.missing_tasks({t: i for i, t in first.items()}) == []
    ls_client.tasks.delete(id=newest)  # by hand
    assert adapter.missing_tasks({newest: newest_item}) == [newest]
    later = adapter.push(_tasks(1, start=3), "r1")
    reused = later["pool/digit-00003.png"]
    # SQLite gives the deleted newest id to the next import: the id alone looks present
    if reused == newest:
        assert newest in {t.id for t in _all_tasks(ls_client, ls_project.id)}
    assert adapter.missing_tasks({newest: newest_item, **kept}) == [newest]
    assert adapter.missing_tasks({reused: "pool/digit-00003.png"}) == []


def test_push_twice_does_not_duplicate(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter(import_chunk_size=4)
    first = adapter.push(_tasks(6), "r1")
    again = ls_project.adapter().push(_tasks(9), "r1")  # 6 old + 3 new, a fresh adapter
    assert {k: again[k] for k in first} == first
    assert len(again) == 9
    assert len(_all_tasks(ls_client, ls_project.id)) == 9
    assert adapter.existing_tasks() == again
    assert adapter.existing_tasks(["pool/digit-00002.png", "nope"]) == {
        "pool/digit-00002.png": first["pool/digit-00002.png"]
    }


def test_push_after_crash_mid_import_does_not_duplicate(
    ls_project: LabelStudioProject, ls_client: LabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = ls_project.adapter(import_chunk_size=3)
    real = adapter.ls.import_tasks
    calls: list[int] = []

    def crash_after_first(payload: list[dict[str, Any]], timeout_s: float) -> list[int]:
        calls.append(len(payload))
        if len(calls) > 1:
            raise KeyboardInterrupt("killed mid-import")  # not retried: the process died
        return real(payload, timeout_s)

    monkeypatch.setattr(adapter.ls, "import_tasks", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        adapter.push(_tasks(8), "r1")
    assert len(_all_tasks(ls_client, ls_project.id)) == 3  # the first chunk landed

    mapping = ls_project.adapter(import_chunk_size=3).push(_tasks(8), "r1")
    stored = _all_tasks(ls_client, ls_project.id)
    assert len(stored) == 8
    assert sorted(mapping.values()) == sorted(t.id for t in stored)
    assert len({t.data["al_item_id"] for t in stored}) == 8


def test_import_that_lands_but_times_out_is_not_retried_blindly(
    ls_project: LabelStudioProject, ls_client: LabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = ls_project.adapter(import_chunk_size=5)
    real = adapter.ls.import_tasks
    calls: list[int] = []

    def lands_then_times_out(payload: list[dict[str, Any]], timeout_s: float) -> list[int]:
        calls.append(len(payload))
        ids = real(payload, timeout_s)
        if len(calls) == 1:
            raise httpx.ReadTimeout("the response was lost")
        return ids

    monkeypatch.setattr(adapter.ls, "import_tasks", lands_then_times_out)
    mapping = adapter.push(_tasks(7), "r1")
    stored = _all_tasks(ls_client, ls_project.id)
    assert len(stored) == 7  # the 5 that landed were found, not imported again
    assert calls == [5, 2]
    assert sorted(mapping.values()) == sorted(t.id for t in stored)


def test_duplicates_left_by_an_unknown_outcome_are_removed(
    ls_project: LabelStudioProject, ls_client: LabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = ls_project.adapter(import_chunk_size=10)
    real = adapter.ls.import_tasks
    calls: list[int] = []

    def lands_late(payload: list[dict[str, Any]], timeout_s: float) -> list[int]:
        # The first import commits only after our reconcile looked (a slow server):
        # simulate it by importing the same payload twice on the retry.
        calls.append(len(payload))
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow")
        real(payload, timeout_s)
        return real(payload, timeout_s)

    monkeypatch.setattr(adapter.ls, "import_tasks", lands_late)
    mapping = adapter.push(_tasks(4), "r1")
    stored = _all_tasks(ls_client, ls_project.id)
    assert len(stored) == 4
    assert sorted(mapping.values()) == sorted(t.id for t in stored)


def test_model_version_and_sampling_order(
    label_studio: LabelStudioHandle, ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter()
    adapter.set_model_version("r1-bald")  # before the push: applied by the push
    tasks = _tasks(5)
    mapping = adapter.push(list(reversed(tasks)), "r1-bald")
    assert ls_client.projects.get(id=ls_project.id).model_version == "r1-bald"
    # Label Studio's sequential sampling serves priority 0 first, then 1.
    served = []
    for _ in range(2):
        req = urllib.request.Request(
            f"{label_studio.url}/api/projects/{ls_project.id}/next",
            headers={"Authorization": f"Token {label_studio.legacy_token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            task_id = json.load(resp)["id"]
        served.append(task_id)
        annotate(ls_client, task_id, "1")
    assert served == [mapping[tasks[0].item_id], mapping[tasks[1].item_id]]
    adapter.push(_tasks(2, round_=2, start=100), "r2-bald")
    adapter.set_model_version("r2-bald")
    assert ls_client.projects.get(id=ls_project.id).model_version == "r2-bald"


# ---------------------------------------------------------------- poll


def _state_map(result: Any) -> dict[str, Any]:
    ids = [s.task_id for s in result.states]
    assert len(ids) == len(set(ids)), "a task appears twice in one poll"
    return {s.item_id: s for s in result.states}


def test_poll_is_incremental_and_resolves_states(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter(page_size=2)
    mapping = adapter.push(_tasks(5), "r1")
    items = list(mapping)
    first = adapter.poll(None)
    states = _state_map(first)
    assert set(states) == set(items)
    assert {s.status for s in states.values()} == {"unlabeled"}
    assert first.watermark is not None and first.foreign_tasks == 0

    _wait_tick()
    nothing = adapter.poll(first.watermark)
    assert nothing.states == [] and nothing.watermark == first.watermark

    a, b, c = items[0], items[1], items[2]
    ann_a = annotate(ls_client, mapping[a], "4")
    skip(ls_client, mapping[b])
    ann_c = annotate(ls_client, mapping[c], "2")
    second = adapter.poll(first.watermark)
    states = _state_map(second)
    assert set(states) == {a, b, c}  # only what changed
    assert (states[a].status, states[a].label, states[a].annotation_id) == ("labeled", "4", ann_a)
    assert (states[b].status, states[b].label) == ("skipped", None)
    assert states[c].label == "2"
    assert second.watermark is not None and second.watermark > first.watermark

    _wait_tick()
    ls_client.annotations.update(
        id=ann_a,
        result=[
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": ["9"]},
            }
        ],
    )
    ls_client.annotations.delete(id=ann_c)
    third = _state_map(adapter.poll(second.watermark))
    assert set(third) == {a, c}
    assert (third[a].status, third[a].label, third[a].annotation_id) == ("labeled", "9", ann_a)
    assert (third[c].status, third[c].label) == ("unlabeled", None)  # withdrawn


def test_poll_overlap_rereads_without_double_counting(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    mapping = ls_project.adapter().push(_tasks(4), "r1")
    adapter = ls_project.adapter(page_size=3)
    base = adapter.poll(None)
    assert base.watermark is not None
    annotate(ls_client, mapping["pool/digit-00001.png"], "1")
    again = adapter.poll(base.watermark - timedelta(hours=1))  # the cycle's overlap window
    states = _state_map(again)  # asserts no duplicates
    assert set(states) == set(mapping)  # the overlap re-reads the hour: idempotent states
    assert states["pool/digit-00001.png"].label == "1"
    assert again.watermark is not None and base.watermark is not None
    assert again.watermark > base.watermark


def test_poll_invalid_and_foreign_tasks(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter(classes=list(DIGIT_CLASSES[:9]))  # '9' is not a class
    mapping = adapter.push(_tasks(2), "r1")
    by_hand: Any = [{"data": {"image": "s3://elsewhere/by-hand.png"}}]
    ls_client.projects.import_tasks(id=ls_project.id, request=by_hand)
    t0, t1 = mapping.values()
    annotate(ls_client, t0, "9")
    ls_client.annotations.create(id=t1, result=[])  # submitted without a choice
    result = adapter.poll(None)
    assert result.foreign_tasks == 1
    states = {s.task_id: s for s in result.states}
    assert set(states) == {t0, t1}
    assert states[t0].status == "invalid" and states[t0].label is None
    assert "label '9'" in (states[t0].reason or "")
    assert "labels.classes" in (states[t0].reason or "")
    assert states[t1].status == "invalid" and "no choice in 'label'" in (states[t1].reason or "")


def test_poll_label_map(ls_project: LabelStudioProject, ls_client: LabelStudio) -> None:
    adapter = ls_project.adapter(label_map={"0": "zero"})
    adapter.check_project(["zero", *DIGIT_CLASSES[1:]])
    mapping = adapter.push(_tasks(1, start=10), "r1")  # predicted class "0"
    (task,) = _all_tasks(ls_client, ls_project.id)
    assert _prediction(task)["result"][0]["value"] == {"choices": ["0"]}
    annotate(ls_client, mapping["pool/digit-00010.png"], "0")
    (state,) = adapter.poll(None).states
    assert state.label == "zero"


def test_poll_several_annotations_rule(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    adapter = ls_project.adapter()
    mapping = adapter.push(_tasks(2), "r1")
    t0, t1 = mapping.values()
    annotate(ls_client, t0, "1", ground_truth=True)
    annotate(ls_client, t0, "2")  # newer, but the ground truth wins
    annotate(ls_client, t1, "3")
    skip(ls_client, t1)  # a later skip does not undo a label
    newest = annotate(ls_client, t1, "5")
    states = {s.task_id: s for s in adapter.poll(None).states}
    assert (states[t0].status, states[t0].label) == ("labeled", "1")
    assert (states[t1].label, states[t1].annotation_id) == ("5", newest)
    latest = {s.task_id: s for s in ls_project.adapter(multi_annotation="latest").poll(None).states}
    assert latest[t0].label == "2"
    annotate(ls_client, t1, "3")
    majority = ls_project.adapter(multi_annotation="majority").poll(None).states
    assert {s.task_id: s.label for s in majority}[t1] == "3"  # 3, 5, 3


def test_demo_helpers_label_in_priority_order(ls_project: LabelStudioProject) -> None:
    adapter = ls_project.adapter()
    tasks = _tasks(3)
    mapping = adapter.push(list(reversed(tasks)), "r1")
    assert adapter.open_tasks() == [(t.item_id, mapping[t.item_id]) for t in tasks]
    adapter.annotate_task(mapping[tasks[0].item_id], "0")
    adapter.skip_task(mapping[tasks[1].item_id])
    assert [i for i, _ in adapter.open_tasks()] == [tasks[2].item_id]


# ---------------------------------------------------------------- tokens, failures


@pytest.mark.parametrize("kind", ["legacy", "pat"])
def test_both_token_kinds_work(
    kind: str, label_studio: LabelStudioHandle, ls_project: LabelStudioProject
) -> None:
    token = label_studio.legacy_token if kind == "legacy" else label_studio.personal_access_token()
    adapter = ls_project.adapter(token=token)
    assert adapter.ls.token_kind == (
        "legacy token" if kind == "legacy" else "personal access token"
    )
    assert adapter.check_project([]).project_id == ls_project.id
    adapter.push(_tasks(2), "r1")
    assert len(adapter.poll(None).states) == 2


@pytest.mark.parametrize(
    "token",
    [
        "not-a-real-token-0123456789",
        # a well-formed JWT refresh token that this server never issued
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6ODEwMjc5OTczOCwiaWF0IjoxNzk1NTk5NzM4LCJqdGkiOiJ4IiwidXNlcl9pZCI6IjEifQ.c2lnbmF0dXJl",
    ],
)
def test_wrong_token_is_an_auth_error(token: str, ls_project: LabelStudioProject) -> None:
    adapter = ls_project.adapter(token=token)
    t0 = time.monotonic()
    with pytest.raises(AuthError, match=r"rejected the .*ALC_LABEL_STUDIO__TOKEN") as err:
        adapter.check_project([])
    assert token not in str(err.value)
    assert time.monotonic() - t0 < 10  # a 401 is not retried


def test_server_down_is_service_unavailable_fast(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}"
    adapter = LabelStudioAdapter(url, "token-abc", 1, retry_attempts=3, retry_max_wait_s=0.2)
    t0 = time.monotonic()
    down = rf"Label Studio at {url} did not answer"
    with (
        caplog.at_level(logging.WARNING, "connector.retry"),
        pytest.raises(ServiceUnavailable, match=down),
    ):
        adapter.poll(datetime.now(timezone.utc) - timedelta(minutes=1))
    assert time.monotonic() - t0 < 10
    # one WARNING when the outage starts, naming the call (not tenacity's "Retrying
    # <unknown>"); the further retries of the outage go to DEBUG
    retries = [r for r in caplog.records if r.name == "connector.retry"]
    assert [r.levelno for r in retries] == [logging.WARNING]
    assert (
        retries[0].getMessage().split(" failed")[0] == "Label Studio: read the project: attempt 1"
    )
    assert "token-abc" not in caplog.text


def test_secrets_stay_out_of_reprs(label_studio: LabelStudioHandle) -> None:
    adapter = LabelStudioAdapter(label_studio.url, label_studio.legacy_token, 1)
    assert label_studio.legacy_token not in repr(adapter)
    assert label_studio.legacy_token not in repr(label_studio.server)
    _: Callable[..., Any] = adapter.poll  # the protocol's methods exist


# ---------------------------------------------------------------- pure helpers


def test_lookup_chunks_fit_a_request_line() -> None:
    from urllib.parse import quote

    ids = [f"pool/sub dir/ünïcode-{i:07d}.png" for i in range(3000)]
    chunks = list(id_chunks(ids))
    assert [i for c in chunks for i in c] == ids
    for chunk in chunks:
        query = dm_query(
            [
                dm_filter("data.al_item_id", "in_list", "String", chunk),
                dm_filter("id", "greater", "Number", 10**9),
            ],
            "id",
        )
        assert len(quote(query, safe="")) <= MAX_QUERY_CHARS


def test_dm_datetime_format() -> None:
    aware = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert dm_datetime(aware) == "2026-01-02T01:04:05.000006Z"
    assert dm_datetime(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"


def _ann(aid: int, choice: str | None, updated: str, **extra: Any) -> dict[str, Any]:
    result = (
        []
        if choice is None
        else [{"from_name": "label", "to_name": "image", "value": {"choices": [choice]}}]
    )
    return {"id": aid, "result": result, "updated_at": updated, **extra}


def test_resolve_rules_without_a_server() -> None:
    known = {"1": "one", "2": "two"}.get
    anns = [
        _ann(1, "1", "2026-01-01T00:00:01Z", ground_truth=True),
        _ann(2, "2", "2026-01-01T00:00:03Z"),
        _ann(3, "2", "2026-01-01T00:00:02Z"),
        _ann(4, None, "2026-01-01T00:00:09Z", was_cancelled=True),
    ]
    gt = resolve_task(1, "a", anns, choices_name="label", to_class=known)
    assert (gt.status, gt.label, gt.annotation_id) == ("labeled", "one", 1)
    latest = resolve_task(1, "a", anns, choices_name="label", to_class=known, rule="latest")
    assert (latest.label, latest.annotation_id) == ("two", 2)
    majority = resolve_task(1, "a", anns, choices_name="label", to_class=known, rule="majority")
    assert majority.label == "two"
    skipped = resolve_task(1, "a", anns[3:], choices_name="label", to_class=known)
    assert (skipped.status, skipped.label) == ("skipped", None)
    assert resolve_task(1, "a", [], choices_name="label", to_class=known).status == "unlabeled"
    bad = resolve_task(
        1, "a", [_ann(5, "3", "2026-01-01T00:00:01Z")], choices_name="label", to_class=known
    )
    assert bad.status == "invalid" and "label '3'" in (bad.reason or "")


def test_label_config_alias_and_multiple_choice_warning() -> None:
    config = (
        '<View><Image name="img" value="$image"/>'
        '<Choices name="label" toName="img" choice="multiple">'
        '<Choice value="Dog" alias="dog"/><Choice value="cat"/></Choices></View>'
    )
    info = parse_label_config(config, image_field="image", choices_name="label")
    assert info.image_tag == "img" and info.choices == ["dog", "cat"]
    assert any("several choices" in w for w in info.warnings)
    with pytest.raises(ConfigError, match="not valid XML"):
        parse_label_config("<View>", image_field="image", choices_name="label")
