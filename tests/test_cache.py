"""The labeled-item cache: content addressing, etag changes, LRU bound, atomic writes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from connector.contracts.errors import AuthError, ConfigError
from connector.contracts.ports import ObjectInfo
from connector.storage.cache import LabeledCache, entry_hash
from connector.storage.s3 import S3Store
from connector.storage.window import read_many_ordered


class FakeStore:
    """An in-memory ``ObjectStore`` that records every read."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.reads: list[str] = []
        self.fail_with: Exception | None = None

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        raise AssertionError("the cache must never list the pool")

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        if self.fail_with is not None:
            raise self.fail_with
        return self.objects[key]

    def read_many(
        self, keys: Iterable[str], max_workers: int = 8
    ) -> Iterator[tuple[str, bytes | Exception]]:
        return read_many_ordered(self.read, keys, max_workers)

    def url_for(self, key: str) -> str:
        return f"mem://{key}"

    def describe(self) -> str:
        return "mem://"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


def _bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in _files(root))


def _ensure(cache: LabeledCache, store: FakeStore, key: str, etag: str) -> Path:
    """One item through the cache's entry point, ``ensure_many``."""
    path = cache.ensure_many(store, [(key, etag)])[key]
    assert isinstance(path, Path)
    return path


def test_content_addressed_path_and_bytes(tmp_path: Path) -> None:
    cache = LabeledCache(tmp_path / "c", max_bytes=10_000)
    path = cache.put("a/b.PNG", "etag1", b"png-bytes")
    h = hashlib.sha256(b"a/b.PNG\x00etag1").hexdigest()
    assert h == entry_hash("a/b.PNG", "etag1")
    assert path == tmp_path / "c" / "objects" / h[:2] / f"{h}.png"
    assert path.read_bytes() == b"png-bytes"
    assert cache.get("a/b.PNG", "etag1") == path
    assert cache.get("a/b.PNG", "etag2") is None
    odd = cache.put("weird.name.with/slash/../and-no-ext", "e", b"x")
    assert odd.name == entry_hash("weird.name.with/slash/../and-no-ext", "e")  # no suffix


def test_one_read_per_version(tmp_path: Path) -> None:
    store = FakeStore({"x.png": b"X" * 10})
    cache = LabeledCache(tmp_path, max_bytes=1000)
    first = _ensure(cache, store, "x.png", "e1")
    second = _ensure(cache, store, "x.png", "e1")
    assert first == second
    assert store.reads == ["x.png"]  # the second was a hit
    assert _files(tmp_path) == [first]
    assert _bytes_on_disk(tmp_path) == 10


def test_changed_etag_is_refetched_and_the_stale_copy_dropped(tmp_path: Path) -> None:
    store = FakeStore({"x.png": b"old"})
    cache = LabeledCache(tmp_path, max_bytes=1000)
    old_path = _ensure(cache, store, "x.png", "v1")
    store.objects["x.png"] = b"new!"
    new_path = _ensure(cache, store, "x.png", "v2")
    assert store.reads == ["x.png", "x.png"]
    assert new_path != old_path
    assert new_path.read_bytes() == b"new!"
    assert not old_path.exists()
    assert _files(tmp_path) == [new_path]
    assert cache.get("x.png", "v1") is None


def test_lru_eviction_keeps_within_the_byte_bound(tmp_path: Path) -> None:
    cache = LabeledCache(tmp_path, max_bytes=250)
    cache.put("a.png", "1", b"a" * 100)
    cache.put("b.png", "1", b"b" * 100)
    assert cache.get("a.png", "1") is not None  # a is now more recent than b
    cache.put("c.png", "1", b"c" * 100)
    assert cache.get("b.png", "1") is None  # least recently used went first
    assert cache.get("a.png", "1") is not None
    assert cache.get("c.png", "1") is not None
    assert len(_files(tmp_path)) == 2
    assert _bytes_on_disk(tmp_path) == 200


def test_an_item_larger_than_the_bound_is_a_config_error(tmp_path: Path) -> None:
    cache = LabeledCache(tmp_path, max_bytes=10)
    with pytest.raises(ConfigError, match=r"raise state\.cache_max_mb"):
        cache.put("big.png", "1", b"x" * 11)
    assert _files(tmp_path) == []


def test_failed_write_leaves_no_partial_file_and_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = LabeledCache(tmp_path, max_bytes=14)
    old = cache.put("x.png", "v1", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("connector.files.os.fsync", broken_fsync)  # the cache's writer
    with pytest.raises(OSError, match="No space left"):
        cache.put("x.png", "v2", b"new content")
    monkeypatch.undo()

    assert _files(tmp_path) == [old]
    assert old.read_bytes() == b"old"
    assert cache.get("x.png", "v2") is None
    assert cache.get("x.png", "v1") == old
    # the failed write is not counted against the bound: 3 + 11 bytes still fit in 14
    cache.put("y.png", "1", b"y" * 11)
    assert cache.get("x.png", "v1") == old


def test_reopening_keeps_entries_and_cleans_up_after_a_crash(tmp_path: Path) -> None:
    cache = LabeledCache(tmp_path, max_bytes=1000)
    kept = cache.put("kept.png", "1", b"kept")
    gone = cache.put("gone.png", "1", b"gone")
    cache.close()
    gone.unlink()  # a file lost behind the cache's back
    orphan = kept.parent / ("0" * 64 + ".png")  # a complete file never indexed
    orphan.write_bytes(b"orphan")
    tmp = kept.parent / f".{kept.name}.0123456789ab.tmp"  # a write cut short
    tmp.write_bytes(b"par")

    reopened = LabeledCache(tmp_path, max_bytes=1000)
    assert reopened.get("kept.png", "1") == kept
    assert reopened.get("gone.png", "1") is None
    assert _files(tmp_path) == [kept]


def test_reopening_with_a_smaller_bound_evicts(tmp_path: Path) -> None:
    with LabeledCache(tmp_path, max_bytes=1000) as cache:
        for i in range(5):
            cache.put(f"{i}.png", "e", b"x" * 100)
    with LabeledCache(tmp_path, max_bytes=250) as smaller:
        assert _bytes_on_disk(tmp_path) == 200
        kept = [f"{i}.png" for i in range(5) if smaller.get(f"{i}.png", "e") is not None]
        assert kept == ["3.png", "4.png"]  # the least recently used went


def test_ensure_many_reads_only_the_items_asked_for(tmp_path: Path) -> None:
    store = FakeStore({f"{i}.png": bytes([i]) * 20 for i in range(10)})
    cache = LabeledCache(tmp_path, max_bytes=10_000)
    _ensure(cache, store, "3.png", "e")
    store.reads.clear()

    asked = [("7.png", "e"), ("3.png", "e"), ("missing.png", "e"), ("1.png", "e"), ("7.png", "e")]
    result = cache.ensure_many(store, asked, max_workers=2)

    assert list(result) == ["7.png", "3.png", "missing.png", "1.png"]
    assert sorted(store.reads) == ["1.png", "7.png", "missing.png"]  # 3.png was a hit
    assert isinstance(result["missing.png"], KeyError)
    for key in ("7.png", "3.png", "1.png"):
        path = result[key]
        assert isinstance(path, Path)
        assert path.read_bytes() == store.objects[key]
    assert {cache.get(k, "e") for k in ("1.png", "3.png", "7.png")} == set(_files(tmp_path))


def test_ensure_many_raises_store_wide_errors(tmp_path: Path) -> None:
    store = FakeStore({"a.png": b"a"})
    store.fail_with = AuthError("bad keys; fix storage.secret_access_key")
    cache = LabeledCache(tmp_path, max_bytes=100)
    with pytest.raises(AuthError):
        cache.ensure_many(store, [("a.png", "e")])


def test_ensure_many_keeps_its_own_items_or_says_the_bound_is_too_small(tmp_path: Path) -> None:
    store = FakeStore({f"{i}.png": b"x" * 100 for i in range(4)})
    cache = LabeledCache(tmp_path, max_bytes=350)
    cache.put("old.png", "e", b"o" * 100)
    result = cache.ensure_many(store, [(f"{i}.png", "e") for i in range(3)])
    assert all(isinstance(p, Path) and p.exists() for p in result.values())
    assert cache.get("old.png", "e") is None  # evicted for the items in use

    with pytest.raises(
        ConfigError, match=r"do not fit in the cache bound.*raise state\.cache_max_mb"
    ):
        cache.ensure_many(store, [(f"{i}.png", "e") for i in range(4)])
    assert _bytes_on_disk(tmp_path) <= 350  # the bound holds again once the call is over


def test_bad_bound_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"state\.cache_max_mb"):
        LabeledCache(tmp_path, max_bytes=0)


@pytest.mark.s3
def test_ensure_many_against_s3(s3_store: S3Store, tmp_path: Path) -> None:
    for i in range(5):
        s3_store.put(f"{i}.png", f"image {i}".encode())
    etags = {info.key: info.etag for info in s3_store.list_objects()}
    cache = LabeledCache(tmp_path, max_bytes=10_000)
    labeled = [("4.png", etags["4.png"]), ("1.png", etags["1.png"])]
    result = cache.ensure_many(s3_store, labeled, max_workers=2)
    assert {k: p.read_bytes() for k, p in result.items() if isinstance(p, Path)} == {
        "4.png": b"image 4",
        "1.png": b"image 1",
    }
    assert len(_files(tmp_path)) == 2
    gets = [0]

    def count_get(**_: object) -> None:
        gets[0] += 1

    s3_store._client.meta.events.register("before-call.s3.GetObject", count_get)
    again = cache.ensure_many(s3_store, labeled)
    assert again == result
    assert gets[0] == 0  # both were hits
