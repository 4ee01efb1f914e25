"""The scoring engine without a cluster: choosing it, Ray missing or unreachable (at
start-up, in ``check``, mid-round), shards and their merge, the worker in-process, and
what travels to the workers (``connector.scoring``, docs/scale.md)."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from connector.app import open_scorer, store_recipe
from connector.cli import main
from connector.contracts.errors import ConfigError, ServiceUnavailable
from connector.devtools.datasets import DIGIT_CLASSES, LabeledImage
from connector.learning.checkpoints import checkpoint_bytes
from connector.learning.model import ModelSpec
from connector.learning.scoring import score_pool
from connector.learning.torch_learner import TorchLearner
from connector.learning.trained import TrainedModel
from connector.learning.training import TrainConfig
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.scoring import LocalScorer
from connector.scoring.shards import ScoringError, Shard, ShardResult, merge, plan_shards
from connector.scoring.worker import ShardWorker
from connector.state import Phase, StateDB
from connector.storage.cache import LabeledCache
from connector.storage.recipe import StoreRecipe
from tests.fakes import FakeLabeling, MemoryStore, make_settings
from tests.fixtures.s3 import write_server_settings
from tests.test_layout import CONNECTOR, ROOT, _imports, _production_modules

SECRET = "alc-engine-test-secret"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_model() -> TrainedModel:
    spec = ModelSpec(image_size=16, width=8, dropout=0.5)
    return TrainedModel.untrained(spec, list(DIGIT_CLASSES), seed=1, channels=1)


def ray_settings(tmp_path: Path, **scoring: Any) -> Any:
    return make_settings(tmp_path, scoring={"engine": "ray", **scoring})


# ------------------------------------------------------------------ choosing the engine
def test_local_is_the_default_engine(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    scorer = open_scorer(settings, TorchLearner(ModelSpec(), TrainConfig()), MemoryStore({}))
    assert isinstance(scorer, LocalScorer) and "local" in scorer.describe()


def test_ray_not_installed_names_the_install() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from connector.scoring import import_ray_engine\n"
        "try:\n    import_ray_engine()\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.startswith("ConfigError")
    assert "pip install 'al-connector[ray]'" in out and 'scoring.engine = "local"' in out


def test_only_the_ray_modules_import_ray_and_the_cli_does_not_load_it() -> None:
    importers = {
        str(p.relative_to(CONNECTOR))
        for p in _production_modules()
        for module, _ in _imports(p)
        if module.split(".")[0] == "ray"
    }
    assert importers == {"scoring/ray_engine.py", "scoring/ray_dispatch.py"}
    code = "import sys, connector.cli, connector.app; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.stdout.strip() == "False", out.stderr


_LOCAL_CLUSTER = """
import json, sys
from pathlib import Path
import numpy as np, ray
from connector.learning.checkpoints import load_checkpoint_bytes
from connector.learning.torch_learner import TorchLearner
from connector.learning.training import TrainConfig
from connector.scoring import LocalScorer
from connector.scoring.ray_engine import RayScorer
from connector.settings.scoring import ScoringSettings
from connector.storage.local import LocalStore
from connector.storage.recipe import StoreRecipe
root, keys = Path(sys.argv[1]), sys.argv[2].split(",")
model = load_checkpoint_bytes(Path(sys.argv[3]).read_bytes())
job = {"with_embeddings": False, "mc_samples": 3, "seed": 4}
local = LocalScorer(TorchLearner(model.spec, TrainConfig()), LocalStore(root))
expected = local.score_keys(model, keys, **job)
cfg = ScoringSettings(engine="ray", ray_address="local", workers=1, shard_size=16)
scorer = RayScorer(cfg, StoreRecipe("local", local_root=root), batch_size=8, read_concurrency=2)
scored = scorer.score_keys(model, keys, **job)
gcs = ray.get_runtime_context().gcs_address
scorer.close()
same = scored.outputs.ids == expected.outputs.ids and np.allclose(
    scored.outputs.probs_N_K_C, expected.outputs.probs_N_K_C, atol=1e-5)
print(json.dumps({"gcs": gcs, "same": bool(same), "up_after_close": ray.is_initialized()}))
"""


@pytest.mark.slow
def test_ray_address_local_starts_a_loopback_cluster_and_scores_like_local(
    tmp_path: Path, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    # The default ray_address, in a process of its own: Ray is one per process.
    import json

    root, items = digits_dir
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(checkpoint_bytes(small_model()))
    keys = ",".join(i.key for i in items[:40])
    done = subprocess.run(
        [sys.executable, "-c", _LOCAL_CLUSTER, str(root), keys, str(model_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Linux: a loopback alias (Ray turns 127.0.0.1 into the network address); elsewhere
    # Ray keeps a local cluster on 127.0.0.1 itself.
    loopback = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"
    assert result["gcs"].startswith(loopback + ":"), "the local cluster left loopback"
    assert result["same"] and not result["up_after_close"]


# ------------------------------------------------------------------ an unreachable cluster
def test_an_unreachable_cluster_fails_start_up_with_the_fix(tmp_path: Path) -> None:
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{closed_port()}"
    settings = ray_settings(tmp_path, ray_address=address, connect_timeout_s=2)
    learner = TorchLearner(ModelSpec(), TrainConfig())
    with pytest.raises(ServiceUnavailable) as err:
        open_scorer(settings, learner, MemoryStore({}))
    text = str(err.value)
    assert f"cannot reach the Ray cluster at {address}" in text
    assert "fix scoring.ray_address" in text and "ray start --head" in text
    with pytest.raises(ConfigError, match=r"scoring\.ray_address 'nowhere' is not"):
        open_scorer(ray_settings(tmp_path, ray_address="nowhere"), learner, MemoryStore({}))


@pytest.mark.labelstudio
@pytest.mark.s3
def test_check_reports_an_unreachable_cluster(
    tmp_path: Path, label_studio: Any, s3_server: str, s3_bucket: str
) -> None:
    address = f"ray://127.0.0.1:{closed_port()}"
    extra = f'[scoring]\nengine = "ray"\nray_address = "{address}"\nconnect_timeout_s = 2\n'
    config = write_server_settings(
        tmp_path, label_studio.url, s3_server, s3_bucket, title="ray-check", extra=extra
    )
    env = {"ALC_LABEL_STUDIO__TOKEN": label_studio.legacy_token}
    result = CliRunner().invoke(main, ["check", "--config", str(config)], env=env)
    assert result.exit_code == 1, result.output
    assert "ok   object storage" in result.output and "ok   label studio" in result.output
    line = next(ln for ln in result.output.splitlines() if "scoring engine" in ln)
    assert line.startswith("FAIL scoring engine: cannot reach the Ray cluster at " + address)
    assert "fix scoring.ray_address" in line


def test_an_unreachable_cluster_mid_round_is_retried_then_failed_with_an_alert(
    tmp_path: Path, digit_objects: Any
) -> None:
    objects, _ = digit_objects
    address = f"127.0.0.1:{closed_port()}"
    settings = make_settings(
        tmp_path,
        # a cold start on embeddings: round 0 scores the pool with the initial model
        strategy={"name": "badge", "cold_start": "coreset", "batch_size": 10},
        scoring={"engine": "ray", "ray_address": address, "connect_timeout_s": 1},
        rounds={"max_phase_attempts": 2},
    )
    learner = TorchLearner(ModelSpec(image_size=16, width=8), TrainConfig())
    store = MemoryStore(objects)
    ports = Ports(
        StateDB(settings.db_path()),
        store,
        FakeLabeling(DIGIT_CLASSES),
        LabeledCache(settings.cache_dir(), 10_000_000),
    )
    # The scorer the app would build, created after start-up (the cluster went away).
    from connector.scoring.ray_engine import RayScorer

    scorer = RayScorer(settings.scoring, store_recipe(settings), batch_size=8, read_concurrency=2)
    engine = RoundEngine(settings, ports, learner, DIGIT_CLASSES, scorer=scorer)
    first = engine.step()
    assert first is not None and first.phase is Phase.SCORE and first.attempts == 1
    assert first.error and "ScoringError: cannot reach the Ray cluster" in first.error
    failed = engine.step()
    assert failed is not None and failed.phase is Phase.FAILED
    (alert,) = [a for a in engine.state.alerts() if a["kind"] == "phase_failed"]
    assert "phase SCORE FAILED" in alert["message"] and address in alert["message"]
    assert "fix scoring.ray_address" in alert["message"]


# ------------------------------------------------------------------ shards and merge
def _result(shard: Shard, rows: list[str], k: int = 2) -> ShardResult:
    probs = np.full((len(rows), k, 3), 1 / 3, dtype=np.float32)
    return ShardResult(shard.index, rows, probs, None, [], 0.1)


def test_shards_cover_the_candidates_in_order_and_merge_back() -> None:
    keys = [f"k{i}" for i in range(10)]
    shards = plan_shards(keys, 4)
    assert [(s.start, len(s.keys)) for s in shards] == [(0, 4), (4, 4), (8, 2)]
    results = {s.index: _result(s, [k for k in s.keys if k != "k5"]) for s in reversed(shards)}
    outputs, _ = merge(shards, results, samples=2, classes=3, feature_dim=None)
    assert outputs.ids == [k for k in keys if k != "k5"]
    empty, _ = merge([], {}, samples=2, classes=3, feature_dim=4)
    assert empty.probs_N_K_C.shape == (0, 2, 3) and empty.emb_N_D is not None


def test_merge_refuses_a_missing_shard_and_a_key_twice() -> None:
    shards = plan_shards(["a", "b", "c"], 2)
    with pytest.raises(ScoringError, match="without a result"):
        merge(shards, {0: _result(shards[0], ["a", "b"])}, samples=2, classes=3, feature_dim=None)
    twice = {0: _result(shards[0], ["a", "a"]), 1: _result(shards[1], ["c"])}
    with pytest.raises(ScoringError, match="rows of other keys"):
        merge(shards, twice, samples=2, classes=3, feature_dim=None)
    other = {0: _result(shards[0], ["a", "c"]), 1: _result(shards[1], ["c"])}
    with pytest.raises(ScoringError, match="rows of other keys"):
        merge(shards, other, samples=2, classes=3, feature_dim=None)


# ------------------------------------------------------------------ what travels
def test_the_recipe_masks_its_secret_and_carries_it_to_the_worker(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        storage={
            "kind": "s3",
            "bucket": "pool",
            "access_key_id": "AKIDEXAMPLE",
            "secret_access_key": SECRET,
        },
    )
    recipe = store_recipe(settings)
    assert SECRET not in repr(recipe) and SECRET not in recipe.describe()
    travelled = pickle.loads(pickle.dumps(recipe))  # what Ray sends to an actor
    assert travelled.secret_access_key.get_secret_value() == SECRET
    kept = store_recipe(
        make_settings(tmp_path, storage=dict(settings.storage), scoring={"send_credentials": 0})
    )
    assert kept.secret_access_key is None and kept.access_key_id is None
    assert "workers' own keys" in kept.describe()


def test_the_worker_scores_its_shard_as_the_whole_pool_and_writes_nothing(
    tmp_path: Path, digits_dir: tuple[Path, list[LabeledImage]]
) -> None:
    root, items = digits_dir
    keys = [i.key for i in items[:30]]
    model = small_model()
    whole = score_pool(
        model, [(k, (root / k).read_bytes()) for k in keys], mc_samples=3, seed=2, batch_size=8
    )
    recipe = StoreRecipe("local", local_root=root)
    worker = ShardWorker(
        recipe, checkpoint_bytes(model), batch_size=8, read_concurrency=2, torch_threads=1
    )
    written: list[str] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        # open(path, mode, flags): a write, or a file created, by the worker while scoring
        if event == "open" and recording and len(args) >= 2:
            mode, flags = args[1], (args[2] if len(args) > 2 else 0)
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                isinstance(flags, int) and flags & 0o3
            ):
                written.append(str(args[0]))

    recording = True
    sys.addaudithook(audit)
    try:
        (tmp_path / "probe.txt").write_text("the hook sees writes")
        assert written == [str(tmp_path / "probe.txt")]
        written.clear()
        shard = Shard(1, 10, tuple(keys[10:30]))
        result = worker.score(shard, mc_samples=3, seed=2, with_embeddings=False)
    finally:
        recording = False
    assert isinstance(result, ShardResult)
    assert result.ids == keys[10:30]
    np.testing.assert_allclose(result.probs_N_K_C, whole.outputs.probs_N_K_C[10:], atol=1e-6)
    assert written == [], "the worker wrote to disk while scoring"


def test_a_store_outage_on_a_worker_comes_back_as_the_outage(tmp_path: Path) -> None:
    recipe = StoreRecipe(
        "s3",
        bucket="pool",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        region="us-east-1",
        access_key_id=SecretStr("AKIDEXAMPLE"),
        secret_access_key=SecretStr(SECRET),
        options={"retry_attempts": 1, "connect_timeout_s": 1},
    )
    worker = ShardWorker(
        recipe, checkpoint_bytes(small_model()), batch_size=8, read_concurrency=2, torch_threads=1
    )
    failure = worker.score(
        Shard(0, 0, ("a.png", "b.png")), mc_samples=1, seed=0, with_embeddings=False
    )
    assert not isinstance(failure, ShardResult)
    error = failure.error()
    assert isinstance(error, ServiceUnavailable) and "storage.endpoint_url" in str(error)
    assert SECRET not in str(error)
