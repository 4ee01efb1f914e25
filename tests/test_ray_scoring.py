"""Pool scoring on Ray: a local cluster on loopback (2 CPUs) and the real S3 server.

One Ray cluster for the module (``ray_cluster``), started once: Ray's start-up and each
round's workers (a torch import each) are most of this file's time. The pool is the
digits in a SeaweedFS bucket; the Ray workers read it themselves. Checked: Ray and local
scoring give the same outputs and the same selection (a whole round through the engine,
too, where the daemon reads no candidate), a worker killed mid-scoring has its shards
retried with nothing twice, store-wide errors on a worker surface as on the daemon, the
S3 secret stays out of Ray's logs and errors, and a lost cluster fails the attempt.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import ray
from pydantic import SecretStr

from connector.contracts.errors import AuthError
from connector.devtools.datasets import DIGIT_CLASSES, LabeledImage
from connector.learning.model import ModelSpec
from connector.learning.torch_learner import TorchLearner
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.scoring import LocalScorer, ray_dispatch
from connector.scoring.ray_engine import LOOPBACK_NODE_IP, RayScorer
from connector.scoring.shards import ScoringError
from connector.settings.scoring import ScoringSettings
from connector.state import Phase, StateDB
from connector.storage.cache import LabeledCache
from connector.storage.recipe import StoreRecipe
from connector.storage.s3 import S3Store
from strategies import get_strategy
from tests.fakes import FakeLabeling, label_all, make_settings
from tests.fixtures.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION, TEST_PREFIX

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[1]
MC = 4


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster for the module: 2 CPUs, on loopback, a small object store."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        _node_ip_address=LOOPBACK_NODE_IP,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def pool(
    s3_store: S3Store, digits_dir: tuple[Path, list[LabeledImage]]
) -> tuple[S3Store, list[str]]:
    """120 digits in the bucket, and a candidate list with a corrupt object and a key
    deleted after listing among them."""
    root, items = digits_dir
    keys = [i.key for i in items[:120]]
    for key in keys:
        s3_store.put(key, (root / key).read_bytes())
    s3_store.put("corrupt.png", b"\x89PNG\r\n\x1a\n garbage")
    return s3_store, [*keys[:50], "corrupt.png", *keys[50:90], "deleted.png", *keys[90:]]


def recipe_for(store: S3Store, secret: str = FAKE_SECRET_ACCESS_KEY) -> StoreRecipe:
    return StoreRecipe(
        "s3",
        bucket=store.bucket,
        prefix=TEST_PREFIX,
        endpoint_url=store.endpoint_url,
        region=REGION,
        access_key_id=SecretStr(FAKE_ACCESS_KEY_ID),
        secret_access_key=SecretStr(secret),
        options={"retry_attempts": 2, "retry_max_wait_s": 0.05},
    )


def ray_scorer(store: S3Store, **cfg: Any) -> RayScorer:
    settings = ScoringSettings(**{"engine": "ray", "workers": 2, "shard_size": 16, **cfg})
    return RayScorer(settings, recipe_for(store), batch_size=8, read_concurrency=4)


def small_model() -> TrainedModel:
    spec = ModelSpec(image_size=16, width=8, dropout=0.5)
    return TrainedModel.untrained(spec, list(DIGIT_CLASSES), seed=3, channels=1)


def local_scorer(store: S3Store) -> LocalScorer:
    learner = TorchLearner(ModelSpec(image_size=16, width=8), TrainConfig(), batch_size=8)
    return LocalScorer(learner, store, read_concurrency=4)


def _ray_logs() -> list[Path]:
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


def test_ray_workers_run_this_checkout(ray_cluster: None) -> None:
    # Otherwise the tests below would score with another copy of the package.
    @ray.remote
    def where() -> str:
        import connector

        return str(Path(connector.__file__).resolve().parent)

    assert ray.get(where.remote()) == str(ROOT / "connector")


def test_check_reports_the_clusters_nodes_and_cpus(ray_cluster: None) -> None:
    address = ray.get_runtime_context().gcs_address
    recipe = StoreRecipe("s3", bucket="pool")
    fits = RayScorer(
        ScoringSettings(engine="ray", ray_address=address), recipe, batch_size=8, read_concurrency=2
    ).check()
    assert fits == (
        f"ray {ray.__version__} cluster at {address}: 1 node, 2 CPUs; 2 workers x 1 CPU"
    )
    crowded = ScoringSettings(engine="ray", ray_address=address, workers=3)
    text = RayScorer(crowded, recipe, batch_size=8, read_concurrency=2).check()
    assert "the workers reserve 3 CPUs" in text and "lower scoring.workers" in text
    assert ray.is_initialized()  # a cluster it did not join stays up


def test_ray_scores_like_local_scoring(ray_cluster: None, pool: tuple[S3Store, list[str]]) -> None:
    store, keys = pool
    model = small_model()
    kwargs: dict[str, Any] = {"with_embeddings": True, "mc_samples": MC, "seed": 11}
    local = local_scorer(store).score_keys(model, keys, **kwargs)
    sharded = ray_scorer(store).score_keys(model, keys, **kwargs)

    assert sharded.outputs.ids == local.outputs.ids and len(local.outputs.ids or []) == 120
    assert sharded.failures == local.failures
    assert [k for k, _ in sharded.failures] == ["corrupt.png", "deleted.png"]
    np.testing.assert_allclose(sharded.outputs.probs_N_K_C, local.outputs.probs_N_K_C, atol=1e-5)
    assert sharded.outputs.emb_N_D is not None and local.outputs.emb_N_D is not None
    np.testing.assert_allclose(sharded.outputs.emb_N_D, local.outputs.emb_N_D, atol=1e-4)
    assert sharded.outputs.probs_N_K_C.std(axis=1).max() > 0  # MC samples differ
    for name in ("bald", "badge"):  # a disagreement score and an embedding strategy
        strategy = get_strategy(name)
        a = strategy.select(local.outputs, 10, np.random.default_rng(0))
        b = strategy.select(sharded.outputs, 10, np.random.default_rng(0))
        assert list(a.indices) == list(b.indices), name
    assert sharded.info["shards"] == 8 and sharded.info["retried_shards"] == 0
    assert local.info["engine"] == "local" and sharded.info["engine"] == "ray"
    # The keys went to the workers as SecretStr: nothing Ray logged shows the secret.
    assert FAKE_SECRET_ACCESS_KEY not in repr(recipe_for(store))
    for path in _ray_logs():
        assert FAKE_SECRET_ACCESS_KEY.encode() not in path.read_bytes(), path


def _is_worker(process: psutil.Process) -> bool:
    """A Ray actor process of ours: Ray titles it after the class (``ray::ShardWorker``)."""
    try:
        return "ShardWorker" in " ".join(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return False


def test_a_worker_killed_mid_scoring_has_its_shards_retried(
    ray_cluster: None, pool: tuple[S3Store, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys = pool
    model = small_model()
    killed: list[int] = []
    finished_by: list[str] = []  # ShardResult.worker ("pid@host") of each finished shard
    take = ray_dispatch.Dispatch._take

    def record(self: ray_dispatch.Dispatch, ref: Any) -> int:
        shard = self.owner[ref][1]
        n = take(self, ref)
        if n and shard is not None:
            finished_by.append(self.results[shard.index].worker)
        return n

    monkeypatch.setattr(ray_dispatch.Dispatch, "_take", record)

    def kill_a_worker(_what: str, done: int, _total: int) -> None:
        # SIGKILL the worker whose shard just finished: it was fed two of the eight
        # shards, so it still holds one. (Any worker would not do: the other one may not
        # have started yet, and then holds none, as a loaded CI machine showed.)
        if killed:
            return
        pid = int(finished_by[-1].split("@")[0])
        workers = [p.pid for p in psutil.Process().children(recursive=True) if _is_worker(p)]
        assert pid in workers, (pid, workers)
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    scorer = ray_scorer(store)
    scored = scorer.score_keys(
        model, keys, with_embeddings=False, mc_samples=MC, seed=5, progress=kill_a_worker
    )
    local = local_scorer(store).score_keys(
        model, keys, with_embeddings=False, mc_samples=MC, seed=5
    )

    assert len(killed) == 1
    assert scored.info["lost_workers"] == 1 and scored.info["retried_shards"] >= 1
    ids = scored.outputs.ids or []
    assert len(ids) == len(set(ids)) == 120, "an item scored twice, or lost"
    assert ids == local.outputs.ids and scored.failures == local.failures
    np.testing.assert_allclose(scored.outputs.probs_N_K_C, local.outputs.probs_N_K_C, atol=1e-5)


def test_rejected_keys_on_the_workers_fail_as_on_the_daemon(
    ray_cluster: None, pool: tuple[S3Store, list[str]]
) -> None:
    store, keys = pool
    wrong = "alc-wrong-secret-9f3c"
    settings = ScoringSettings(engine="ray", workers=1, shard_size=64)
    scorer = RayScorer(settings, recipe_for(store, wrong), batch_size=8, read_concurrency=4)
    with pytest.raises(AuthError, match=r"storage\.secret_access_key") as err:
        scorer.score_keys(small_model(), keys, with_embeddings=False)
    assert wrong not in str(err.value)
    for path in _ray_logs():
        assert wrong.encode() not in path.read_bytes(), path


def test_losing_the_cluster_while_scoring_fails_the_attempt(
    ray_cluster: None, pool: tuple[S3Store, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.scoring import ray_dispatch

    def gone(*_a: Any, **_k: Any) -> Any:
        raise ConnectionError("GCS at 127.0.0.2:6379 is gone")

    store, keys = pool
    monkeypatch.setattr(ray_dispatch.ray, "wait", gone)
    scorer = ray_scorer(store)
    with pytest.raises(ScoringError, match=r"lost the Ray cluster .* tried again"):
        scorer.score_keys(small_model(), keys, with_embeddings=False)


def _engine(
    tmp_path: Path, store: Any, scorer: Any, learner: TorchLearner
) -> tuple[RoundEngine, FakeLabeling]:
    settings = make_settings(
        tmp_path,
        strategy={"name": "bald", "batch_size": 10},
        validation={"size": 10},
        model={"mc_samples": MC},
    )
    labeling = FakeLabeling(DIGIT_CLASSES)
    ports = Ports(
        StateDB(settings.db_path()),
        store,
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    return RoundEngine(settings, ports, learner, DIGIT_CLASSES, scorer=scorer), labeling


class GuardedStore:
    """The daemon's store; a read while ``forbidden`` is recorded."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.forbidden = False
        self.read_in_score: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def read(self, key: str) -> bytes:
        if self.forbidden:
            self.read_in_score.append(key)
        return self.store.read(key)

    def read_many(self, keys: Any, max_workers: int = 8) -> Any:
        keys = list(keys)
        if self.forbidden:
            self.read_in_score.extend(keys)
        return self.store.read_many(keys, max_workers)


def test_a_round_scored_on_ray_selects_what_local_scoring_selects(
    ray_cluster: None,
    pool: tuple[S3Store, list[str]],
    digits_dir: tuple[Path, list[LabeledImage]],
    tmp_path: Path,
) -> None:
    store, _ = pool
    truth = {i.key: i.label for i in digits_dir[1]}
    learner = TorchLearner(
        ModelSpec(image_size=16, width=8), TrainConfig(epochs=2, min_steps=1), batch_size=32
    )
    selections = {}
    for engine_name in ("local", "ray"):
        guarded = GuardedStore(store)
        scorer = local_scorer(store) if engine_name == "local" else ray_scorer(store)
        engine, labeling = _engine(tmp_path / engine_name, guarded, scorer, learner)
        score = engine._handlers[Phase.SCORE]

        def guarded_score(
            ctx: Any, rnd: Any, _score: Callable[..., None] = score, _g: GuardedStore = guarded
        ) -> None:
            _g.forbidden = rnd.round > 0  # round 0 is the random cold start
            try:
                _score(ctx, rnd)
            finally:
                _g.forbidden = False

        engine._handlers[Phase.SCORE] = guarded_score
        engine.step()  # round 0: validation split and a random first batch
        label_all(labeling, truth)
        rnd = engine.step()  # round 1: train, score with BALD (MC), select, push
        assert rnd is not None and rnd.round == 1 and rnd.phase is Phase.WAIT, rnd
        diagnostics = engine.state.get_round(1).metrics["selection"]  # type: ignore[union-attr]
        assert diagnostics["scoring"]["engine"] == engine_name
        selections[engine_name] = [s.item_id for s in engine.state.selection(1)]
        if engine_name == "ray":
            # The workers read the candidates; the daemon read none of them.
            assert guarded.read_in_score == []
            # The labeled cache holds labeled items only (the workers keep nothing).
            labeled = [*engine.state.labeled_items("train")]
            labeled += engine.state.labeled_items("validation")
            cached = [p for p in (engine.settings.cache_dir() / "objects").rglob("*.png")]
            assert 0 < len(cached) <= len(labeled)
    assert selections["ray"] == selections["local"] and len(selections["ray"]) == 10
