"""The real-server fixtures work together: digits in the moto bucket, tasks in Label Studio
pointing at them by ``s3://`` URL, Label Studio serving the images, annotations read back."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk import LabelStudio

from connector.contracts.ports import TaskToPush
from connector.devtools.datasets import LabeledImage
from tests.fixtures.labelstudio import LabelStudioHandle, LabelStudioProject, annotate
from tests.fixtures.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION, upload_digits

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3]


def _fetch(url: str, label_studio: LabelStudioHandle) -> bytes:
    """Follow a resolved task URL (a proxy path on Label Studio, or a presigned S3 URL)."""
    if url.startswith("/"):
        url = label_studio.url + url
    req = urllib.request.Request(url)
    if url.startswith(label_studio.url):
        req.add_header("Authorization", f"Token {label_studio.legacy_token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


def test_s3_images_to_label_studio_and_back(
    digits_dir: tuple[Path, list[LabeledImage]],
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    label_studio: LabelStudioHandle,
    ls_project: LabelStudioProject,
    ls_client: LabelStudio,
) -> None:
    root, images = digits_dir
    keys = upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=4)
    truth = {img.key: img.label for img in images}

    adapter = ls_project.adapter()
    adapter.check_project([str(i) for i in range(10)])
    storage_id = adapter.connect_source_storage(
        s3_bucket,
        "pool/",
        endpoint=s3_server,
        region=REGION,
        access_key_id=FAKE_ACCESS_KEY_ID,
        secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )
    assert storage_id > 0
    # Connecting is for URL resolution only: nothing was imported from the bucket.
    assert ls_client.projects.get(id=ls_project.id).task_number == 0
    again = adapter.connect_source_storage(
        s3_bucket,
        "pool/",
        endpoint=s3_server,
        region=REGION,
        access_key_id=FAKE_ACCESS_KEY_ID,
        secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )
    assert again == storage_id  # reused, not connected twice

    tasks = [
        TaskToPush(
            item_id=key,
            image_url=f"s3://{s3_bucket}/pool/{key}",
            round=0,
            split="train",
            priority=i,
            predicted_label="0",
            confidence=0.4,
        )
        for i, key in enumerate(keys)
    ]
    mapping = adapter.push(tasks, "r0-random")
    assert ls_client.projects.get(id=ls_project.id).task_number == len(keys)

    # Label Studio resolves the s3:// URL through the connected storage to the real bytes.
    first = keys[0]
    raw: Any = ls_client.tasks.list(project=ls_project.id, resolve_uri=False, page_size=100)
    stored_urls = {t.id: t.data["image"] for t in raw}
    assert stored_urls[mapping[first]] == f"s3://{s3_bucket}/pool/{first}"
    task: Any = ls_client.tasks.get(id=str(mapping[first]))
    url = str(task.data["image"])
    assert url.startswith("/tasks/")  # Label Studio's proxy for the connected storage
    assert _fetch(url, label_studio) == (root / first).read_bytes()

    # An annotator labels through the API; the adapter reads it back.
    ann_id = annotate(ls_client, mapping[first], truth[first])
    stored: Any = ls_client.annotations.get(id=ann_id)
    assert stored.result[0]["value"]["choices"] == [truth[first]]
    states = {s.item_id: s for s in adapter.poll(None).states}
    assert (states[first].status, states[first].label) == ("labeled", truth[first])
    assert {states[k].status for k in keys[1:]} == {"unlabeled"}
