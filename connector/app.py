"""Wiring: builds the ports, the learner and the engine from settings.

Kept apart from ``cli`` so tests and the demo build the same objects the daemon runs.
The Label Studio SDK and boto3 are imported when a port is opened, not with this module:
``al-connector check`` answers at once and pays for each SDK when it reaches its service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector import retry
from connector.contracts.errors import ConfigError, ServiceUnavailable
from connector.contracts.learner import Learner, PoolScorer
from connector.contracts.ports import ProjectInfo
from connector.labelstudio.config import image_classification_config
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.rounds.plan import check_learner, resolve_plan
from connector.scoring import LocalScorer, import_ray_engine
from connector.settings import Settings
from connector.state import StateDB
from connector.storage.cache import LabeledCache
from connector.storage.local import LocalStore
from connector.storage.recipe import StoreRecipe

if TYPE_CHECKING:
    from connector.labelstudio.adapter import LabelStudioAdapter
    from connector.storage.s3 import S3Store

log = logging.getLogger(__name__)

PROJECT_META = "label_studio_project_id"


def open_store(settings: Settings) -> S3Store | LocalStore:
    s = settings.storage
    if s.kind == "s3":
        from connector.storage.s3 import S3Store

        assert s.bucket is not None  # validated by StorageSettings
        return S3Store(
            s.bucket,
            s.prefix,
            endpoint_url=s.endpoint_url,
            region=s.region,
            access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
            secret_access_key=(
                s.secret_access_key.get_secret_value() if s.secret_access_key else None
            ),
            ca_bundle=s.ca_bundle,
        )
    assert s.local_root is not None
    return LocalStore(
        s.local_root,
        url_template=s.local_url_template or None,
        document_root=s.local_document_root,
    )


def store_recipe(settings: Settings) -> StoreRecipe:
    """The pool's store as the Ray workers open it; the keys travel only when
    ``scoring.send_credentials`` (else the workers use their own AWS chain)."""
    s = settings.storage
    if s.kind == "local":
        return StoreRecipe(
            "local",
            local_root=s.local_root,
            local_url_template=s.local_url_template or None,
            local_document_root=s.local_document_root,
        )
    pem = None
    if s.ca_bundle is not None:
        try:
            pem = s.ca_bundle.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"storage.ca_bundle {s.ca_bundle} cannot be read ({exc.strerror}); fix the path"
            ) from None
    send = settings.scoring.send_credentials
    return StoreRecipe(
        "s3",
        bucket=s.bucket,
        prefix=s.prefix,
        endpoint_url=s.endpoint_url,
        region=s.region,
        access_key_id=s.access_key_id if send else None,
        secret_access_key=s.secret_access_key if send else None,
        ca_bundle_pem=pem,
    )


def open_scorer(settings: Settings, learner: Learner, store: S3Store | LocalStore) -> PoolScorer:
    """The SCORE phase's engine (``scoring.engine``): this process, or a Ray cluster,
    joined here so that an unreachable one fails at start-up (``ServiceUnavailable``)."""
    if settings.scoring.engine == "local":
        return LocalScorer(learner, store, settings.storage.read_concurrency)
    ray_engine = import_ray_engine()
    from connector.learning.torch_learner import TorchLearner

    if not isinstance(learner, TorchLearner):
        raise ConfigError(
            f'scoring.engine = "ray" scores torch models; this learner is a '
            f'{type(learner).__name__}: set scoring.engine = "local"'
        )
    scorer = ray_engine.RayScorer(
        settings.scoring,
        store_recipe(settings),
        batch_size=settings.strategy.score_batch_size,
        read_concurrency=settings.storage.read_concurrency,
    )
    scorer.connect()
    return scorer


def open_labeling(
    settings: Settings, state: StateDB | None = None, store: S3Store | LocalStore | None = None
) -> tuple[LabelStudioAdapter, ProjectInfo]:
    """The Label Studio adapter on the configured project, created if needed.

    With ``storage.connect_label_studio``, the bucket is checked first (a missing bucket
    is a ``ConfigError`` naming it); an empty bucket or prefix, which Label Studio
    refuses to connect, is connected before the first push instead."""
    from connector.labelstudio.adapter import LabelStudioAdapter

    ls = settings.label_studio
    token = ls.resolved_token().get_secret_value()
    project_id = ls.project_id
    if project_id is None and state is not None:
        remembered = state.get_meta(PROJECT_META)
        project_id = int(remembered) if remembered else None
    if project_id is None:
        if not settings.labels.classes:
            raise ConfigError(
                "label_studio.project_id is not set and labels.classes is empty, so no "
                "project can be created; set one of them"
            )
        project_id = LabelStudioAdapter.find_or_create_project(
            ls.url,
            token,
            ls.project_title,
            image_classification_config(
                settings.labels.classes, image_field=ls.image_field, choices_name=ls.choices_name
            ),
            ca_bundle=_ca(ls.ca_bundle),
        )
        log.info("using Label Studio project %d (%s)", project_id, ls.project_title)
    if state is not None:
        state.set_meta(PROJECT_META, str(project_id))
    adapter = _adapter(settings, token, project_id)
    info = adapter.check_project(settings.labels.classes)
    if settings.storage.kind == "s3" and settings.storage.connect_label_studio:
        store = store or open_store(settings)
        if store.check().get("prefix_empty"):
            log.warning(
                "%s is empty: al-connector waits for images, and connects it to Label "
                "Studio before the first push",
                store.describe(),
            )
            adapter.defer_source_storage(**_storage_connection(settings))
        else:
            # Idempotent: an existing connection to the bucket/prefix is reused, never synced.
            adapter.connect_source_storage(**_storage_connection(settings))
    return adapter, info


def _adapter(settings: Settings, token: str, project_id: int) -> LabelStudioAdapter:
    from connector.labelstudio.adapter import LabelStudioAdapter

    ls = settings.label_studio
    return LabelStudioAdapter(
        ls.url,
        token,
        project_id,
        image_field=ls.image_field,
        choices_name=ls.choices_name,
        label_map=settings.labels.map or None,
        classes=settings.labels.classes or None,
        import_chunk_size=ls.import_chunk_size,
        multi_annotation=ls.multi_annotation,
        timeout_s=ls.timeout_s,
        ca_bundle=_ca(ls.ca_bundle),
    )


def _ca(path: Path | None) -> str | None:
    return str(path) if path else None


def _storage_connection(settings: Settings) -> dict[str, Any]:
    s = settings.storage
    return {
        "bucket": s.bucket,
        "prefix": s.prefix,
        # Label Studio's own S3_ENDPOINT passes its SSRF guard; an endpoint sent here is checked
        "endpoint": None if s.label_studio_own_endpoint else s.endpoint_url,
        "region": s.region,
        "access_key_id": s.access_key_id.get_secret_value() if s.access_key_id else None,
        "secret_access_key": (
            s.secret_access_key.get_secret_value() if s.secret_access_key else None
        ),
        "presign": s.presign_urls,
    }


def classes_for(settings: Settings, info: ProjectInfo) -> list[str]:
    """Model classes: the settings' list, else the project's choices through the map."""
    if settings.labels.classes:
        return list(settings.labels.classes)
    mapped = [settings.labels.map.get(c, c) for c in info.choices]
    return list(dict.fromkeys(mapped))


def build_app_when_up(
    settings: Settings, *, learner: Learner | None = None, max_wait_s: float = 60.0
) -> App:
    """``build_app``, tried again while Label Studio or the bucket is unreachable.

    For ``run``: a daemon started before its services waits for them (a WARNING per
    try, jittered exponential waits up to ``max_wait_s``) and starts working when they
    answer; a Ctrl-C stops the wait. ``check`` does not wait: it fails fast.
    Configuration errors (a rejected token, a missing bucket) are never retried.
    """
    return retry.until_up(
        lambda: build_app(settings, learner=learner),
        what="start-up",
        is_transient=lambda exc: isinstance(exc, ServiceUnavailable),
        max_wait_s=max_wait_s,
    )


def check_unlabeled_pool(settings: Settings, store: S3Store | LocalStore) -> str:
    """A training mode that reads the unlabeled pool (FixMatch, SimCLR pre-training) needs
    images in the bucket: refused at start-up (``ConfigError`` with the fix) while it holds
    none. Supervised training waits for images instead (docs/bad-input.md, row 1)."""
    m = settings.model
    pairs = (("semi_supervised", m.semi_supervised), ("pretrain", m.pretrain))
    modes = [f"model.{key} = {value!r}" for key, value in pairs if value != "none"]
    if not modes:
        return "not used: the model trains on labels only"
    if store.check().get("prefix_empty"):
        off = " and ".join(f"{mode.split(' = ')[0]} = 'none'" for mode in modes)
        raise ConfigError(
            f"{' and '.join(modes)} train on unlabeled images, and {store.describe()} holds "
            f"none yet; add images to the bucket first, or start with {off} and turn it on "
            "once they are there"
        )
    return f"{' and '.join(modes)}: images in the bucket"


@dataclass
class App:
    settings: Settings
    engine: RoundEngine
    project: ProjectInfo


def build_app(settings: Settings, *, learner: Learner | None = None) -> App:
    # The round plan is checked before anything is written (no state db, no project),
    # with the learner: it must be able to train what the strategy needs.
    plan = resolve_plan(settings)
    if learner is None:
        from connector.learning.torch_learner import TorchLearner

        learner = TorchLearner.from_settings(settings)
    check_learner(plan.build(), learner, setting="strategy.name")
    store = open_store(settings)
    check_unlabeled_pool(settings, store)
    state = StateDB(settings.db_path())
    labeling, info = open_labeling(settings, state, store)
    classes = classes_for(settings, info)
    cache = LabeledCache(settings.cache_dir(), int(settings.state.cache_max_mb * 1_000_000))
    scorer = open_scorer(settings, learner, store)
    ports = Ports(state, store, labeling, cache)
    engine = RoundEngine(settings, ports, learner, classes, scorer=scorer)
    return App(settings, engine, info)
