"""The same image under two keys is pushed once; the other key is a ``duplicate``
(docs/bad-input.md). Unit tests on the fakes, then one on SeaweedFS + Label Studio."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from connector.contracts.ports import ObjectInfo
from connector.devtools.datasets import LabeledImage
from connector.state import StateDB
from tests.fakes import build, label_all
from tests.fixtures.s3 import upload_digits
from tests.servers import server_daemon


def _pool(digit_objects: Any, n: int) -> tuple[dict[str, bytes], dict[str, str]]:
    objects, truth = digit_objects
    keys = sorted(objects)[:n]
    return {k: objects[k] for k in keys}, {k: truth[k] for k in keys}


def test_same_bytes_under_several_keys_are_pushed_once(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = _pool(digit_objects, 45)
    a, b = sorted(objects)[:2]
    # a triple of one image and a pair of another; 48 items fit in the first round (30 + 20)
    objects |= {"copy-a1.png": objects[a], "copy-a2.png": objects[a], "copy-b.png": objects[b]}
    engine, labeling, _ = build(tmp_path, objects)
    rnd = engine.step()
    assert rnd is not None
    groups = [[a, "copy-a1.png", "copy-a2.png"], [b, "copy-b.png"]]
    for group in groups:
        pushed = [k for k in group if k in labeling.tasks]
        assert len(pushed) == 1, group
        for key in set(group) - set(pushed):
            row = engine.state.item_history(key)
            assert row is not None and row["status"] == "duplicate"
            assert row["duplicate_of"] == pushed[0] and pushed[0] in row["reason"]
    assert len(labeling.tasks) == 45
    assert rnd.metrics["duplicates"] == 3 and rnd.metrics["pushed"] == 45
    assert engine.state.count_items()["duplicate"] == 3
    report = (tmp_path / "state" / "rounds" / "0000" / "report.md").read_text()
    assert "duplicates not pushed: 3" in report
    # never a candidate again, never labeled
    assert not set(engine.state.iter_candidate_ids()) & {k for g in groups for k in g}


def test_a_copy_of_a_labeled_image_added_later_is_not_pushed(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, truth = _pool(digit_objects, 50)
    engine, labeling, _ = build(tmp_path, objects)
    engine.step()
    label_all(labeling, truth)
    original = sorted(labeling.tasks)[3]
    store: Any = engine.ports.store
    store.objects["zz-copy.png"] = objects[original]  # listed after the others
    reads = store.reads
    rnd = engine.step()
    assert rnd is not None and rnd.round == 1
    row = engine.state.item_history("zz-copy.png")
    assert row is not None and row["status"] == "duplicate" and row["duplicate_of"] == original
    assert "zz-copy.png" not in labeling.tasks and rnd.metrics["duplicates"] == 1
    assert store.reads > reads  # the fakes' ETags are no MD5: the bytes were hashed


def test_a_crash_mid_push_keeps_the_same_duplicates_and_refuses_nothing(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, _ = _pool(digit_objects, 45)
    first = sorted(objects)[0]
    objects |= {"copy.png": objects[first]}
    engine, labeling, _ = build(tmp_path, objects, label_studio={"import_chunk_size": 5})
    labeling.fail_after_import = 12
    engine.step()  # PUSH fails after 12 imports; the engine retries it
    assert len(labeling.tasks) == 12
    dup = "copy.png" if first in labeling.tasks else first
    marked = engine.state.item(dup)
    assert marked is not None and marked.status == "duplicate"
    engine.step()
    assert len(labeling.tasks) == 45
    assert engine.state.item(dup).status == "duplicate"  # type: ignore[union-attr]
    assert not [a for a in engine.state.alerts() if a["kind"] == "item_requeued"]


def test_md5_etags_give_the_hash_without_a_read_and_a_changed_object_is_free_again(
    tmp_path: Path,
) -> None:
    state = StateDB(tmp_path / "state.db")
    md5 = hashlib.md5(b"img").hexdigest()
    state.upsert_discovered(
        [
            ObjectInfo("a.png", md5, 3),
            ObjectInfo("b.png", md5.upper(), 3),
            ObjectInfo("multipart.png", md5 + "-2", 3),
            ObjectInfo("local.png", "18a3f-3", 3),
        ]
    )
    hashes = state.content_hashes(["a.png", "b.png", "multipart.png", "local.png"])
    assert hashes == {
        "a.png": f"md5:{md5}",
        "b.png": f"md5:{md5}",
        "multipart.png": None,
        "local.png": None,
    }
    assert state.mark_duplicates(0, {"b.png": "a.png"}) == 1
    # b.png is overwritten with other bytes: a candidate again, with its new hash
    other = hashlib.md5(b"other").hexdigest()
    state.upsert_discovered([ObjectInfo("b.png", other, 5)])
    row = state.item_history("b.png")
    assert row is not None and row["status"] == "discovered" and row["duplicate_of"] is None
    assert row["content_hash"] == f"md5:{other}"


@pytest.mark.labelstudio
@pytest.mark.s3
def test_two_keys_with_the_same_bytes_make_one_task_on_real_servers(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=18)
    data = (digits_dir[0] / keys[0]).read_bytes()
    s3_client.put_object(Bucket=s3_bucket, Key="pool/zz copy.png", Body=data)
    # 19 items, all chosen in round 0 (10 validation + a batch of 10)
    daemon = server_daemon(
        tmp_path, label_studio, s3_server, s3_bucket, monkeypatch, title="alc-dupes", batch_size=10
    )
    daemon.run_once()
    state, adapter = daemon.engine.state, daemon.engine.ports.labeling
    pair = [keys[0], "zz copy.png"]
    # SeaweedFS's single-part ETag is the MD5 of the bytes: the hash came with the listing
    digest = "md5:" + hashlib.md5(data).hexdigest()
    assert state.content_hashes(pair) == dict.fromkeys(pair, digest)
    in_ls = adapter.ls.lookup([*keys, "zz copy.png"])  # type: ignore[attr-defined]
    assert len(in_ls) == 18 and all(len(t) == 1 for t in in_ls.values())
    (pushed,) = [k for k in pair if k in in_ls]
    (dup,) = [k for k in pair if k not in in_ls]
    row = state.item_history(dup)
    assert row is not None and row["status"] == "duplicate" and row["duplicate_of"] == pushed
    rnd = state.get_round(0)
    assert rnd is not None and rnd.metrics["duplicates"] == 1 and rnd.metrics["pushed"] == 18
