"""The settings models: one frozen pydantic model per ``[section]`` and ``Settings``, the whole.

Pure pydantic: the fields, their defaults, bounds and descriptions (the source of
docs/settings.md), and the checks that span fields of one section. Nothing here reads the
environment or the settings file: ``Settings(**values)`` builds from the values it is given
(only ``LabelStudioSettings.resolved_token`` reads ``token_file``, when called). ``loader``
layers the sources into these models; ``reference`` names and documents them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connector.contracts.errors import ConfigError
from connector.settings.model import ModelSettings
from connector.settings.scoring import ScoringSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelStudioSettings(_Section):
    url: str = Field("http://localhost:8080", description="Base URL of Label Studio.")
    token: SecretStr | None = Field(
        None,
        description="API token: a legacy token or a personal access token (JWT). "
        "Prefer the environment (ALC_LABEL_STUDIO__TOKEN) or token_file.",
    )
    token_file: Path | None = Field(None, description="File holding the token (e.g. a secret).")
    project_id: int | None = Field(
        None,
        description="Project to feed. When unset, a project titled project_title is "
        "found or created with the image-classification label config.",
    )
    project_title: str = Field("al-connector", description="Title of the project to create.")
    image_field: str = Field("image", description="Task data field (and Image tag value).")
    choices_name: str = Field("label", description="Name of the Choices control.")
    multi_annotation: Literal["ground_truth_then_latest", "latest", "majority"] = Field(
        "ground_truth_then_latest",
        description="How several annotations on one task resolve to one label.",
    )
    import_chunk_size: int = Field(500, ge=1, le=5000, description="Tasks per import call.")
    import_settle_seconds: float = Field(
        45.0,
        ge=0,
        le=3600,
        description="After a crash cut a push off inside an import call, wait up to this "
        "long for Label Studio to finish that call before importing the items again (its "
        "SQLite retry can commit a dead client's import tens of seconds later).",
    )
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout per request, seconds.")
    ca_bundle: Path | None = Field(
        None,
        description="CA bundle (PEM) that signs Label Studio's TLS certificate, for a "
        "private CA; unset = the system's CAs. Verification is always on.",
    )

    def resolved_token(self) -> SecretStr:
        """The token from ``token`` or ``token_file``; a ConfigError naming the fix if none."""
        if self.token is not None and self.token.get_secret_value().strip():
            return SecretStr(self.token.get_secret_value().strip())
        if self.token_file is not None:
            try:
                text = self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"label_studio.token_file {self.token_file} cannot be read ({exc.strerror}); "
                    "fix the path or set ALC_LABEL_STUDIO__TOKEN"
                ) from None
            if not text:
                raise ConfigError(f"label_studio.token_file {self.token_file} is empty")
            return SecretStr(text)
        raise ConfigError(
            "no Label Studio token: set ALC_LABEL_STUDIO__TOKEN or label_studio.token_file "
            "(Label Studio > Account & Settings > Personal Access Token)"
        )


class StorageSettings(_Section):
    kind: Literal["s3", "local"] = Field("local", description="Pool backend: s3 or local.")
    bucket: str | None = Field(None, description="S3 bucket of the pool (kind = s3).")
    prefix: str = Field("", description="Key prefix of the pool inside the bucket.")
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for MinIO and other S3-compatible servers."
    )
    region: str | None = Field(None, description="S3 region.")
    access_key_id: SecretStr | None = Field(
        None, description="S3 access key; when unset, boto3's usual AWS chain applies."
    )
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    local_root: Path | None = Field(None, description="Pool folder (kind = local).")
    local_url_template: str = Field(
        "/data/local-files/?d={path}",
        description="How Label Studio reaches a local pool file ({path} is relative to "
        "Label Studio's LOCAL_FILES_DOCUMENT_ROOT).",
    )
    local_document_root: Path | None = Field(
        None,
        description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (a parent of local_root); "
        "unset = local_root.",
    )
    connect_label_studio: bool = Field(
        True,
        description="Connect the bucket to the project as source storage so Label Studio "
        "can resolve s3:// URLs (never synced).",
    )
    ca_bundle: Path | None = Field(
        None,
        description="CA bundle (PEM) that signs the S3 endpoint's TLS certificate, for a "
        "private CA; unset = the system's CAs. Verification is always on.",
    )
    presign_urls: bool = Field(
        True,
        description="Label Studio hands browsers presigned URLs to the bucket; false when "
        "browsers cannot reach the endpoint (Label Studio then proxies the images).",
    )
    label_studio_own_endpoint: bool = Field(
        False,
        description="Connect the bucket without an endpoint, so Label Studio uses its own "
        "S3_ENDPOINT variable, which its SSRF guard trusts: needed when the endpoint is a "
        "private address (docker-compose, on-premises MinIO/Ceph; docs/deploy.md).",
    )
    read_concurrency: int = Field(8, ge=1, le=128, description="Parallel object reads.")
    full_rescan_every: int = Field(
        12,
        ge=1,
        description="Every Nth listing is a full rescan, to find keys written out of order.",
    )

    @model_validator(mode="after")
    def _backend_complete(self) -> StorageSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("storage.kind is 's3' but storage.bucket is not set; set it")
        if self.kind == "local" and self.local_root is None:
            raise ValueError("storage.kind is 'local' but storage.local_root is not set; set it")
        return self


class LabelsSettings(_Section):
    classes: list[str] = Field(
        default_factory=list,
        description="Class names in model output order. Empty: the project's choices.",
    )
    map: dict[str, str] = Field(
        default_factory=dict,
        description="Label Studio choice value -> class name, for choices named otherwise.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LabelsSettings:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("labels.classes has duplicates; list each class once")
        unknown = sorted(set(self.map.values()) - set(self.classes)) if self.classes else []
        if unknown:
            raise ValueError(
                f"labels.map maps to {unknown}, which are not in labels.classes; add them"
            )
        return self


class StrategySettings(_Section):
    name: str = Field("badge", description="Acquisition strategy (see docs/strategies.md).")
    params: dict[str, Any] = Field(default_factory=dict, description="Strategy parameters.")
    cold_start: str = Field(
        "random", description="Strategy of the first batch, before any model exists."
    )
    batch_size: int = Field(20, ge=1, le=100_000, description="Items pushed per round.")
    max_candidates: int | None = Field(
        None, ge=1, description="Score a random subset of this many unlabeled items per round."
    )
    score_batch_size: int = Field(256, ge=1, description="Images per inference batch.")


class ValidationSettings(_Section):
    size: int = Field(
        50, ge=0, description="Random validation split, labeled first, never selected."
    )


class RoundSettings(_Section):
    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_rounds" in data:
            raise ValueError("rounds.max_rounds is now stopping.max_rounds; move it to [stopping]")
        return data

    min_labeled_fraction: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Start the next round when this fraction of the batch is done.",
    )
    interval_minutes: float | None = Field(
        None, gt=0, description="Also start a round on this schedule, if anything is new."
    )
    min_new_labels: int = Field(1, ge=0, description="Labels needed since the last round.")
    max_phase_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="A phase that fails this many times in a row sends the round to FAILED "
        "with an alert; configuration errors fail at once.",
    )
    retry_backoff_seconds: float = Field(
        30.0,
        ge=0,
        description="Wait before the 2nd attempt of a failed phase; doubles each attempt "
        "(capped at 30 min).",
    )


class StoppingSettings(_Section):
    """When to stop pushing batches (``rounds.stopping``). Unset criteria never fire."""

    max_rounds: int | None = Field(None, ge=1, description="Stop after this many rounds.")
    max_labels: int | None = Field(
        None, ge=1, description="Stop once this many items are labeled (validation included)."
    )
    target_accuracy: float | None = Field(
        None, description="Stop once validation accuracy reaches this fraction (0.95 = 95 %)."
    )
    plateau_rounds: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Stop when the last this-many trained rounds did not beat the best "
        "validation accuracy before them by plateau_min_gain.",
    )
    plateau_min_gain: float = Field(
        0.005, description="Accuracy gain that counts as progress (0.005 = half a point)."
    )

    @model_validator(mode="after")
    def _fractions(self) -> StoppingSettings:
        acc = self.target_accuracy
        if acc is not None and not 0.0 < acc <= 1.0:
            hint = f"; {acc:g} % is {acc / 100:g}" if 1.0 < acc <= 100.0 else ""
            raise ValueError(
                f"stopping.target_accuracy {acc:g} is not a fraction in (0, 1]{hint}: "
                "set e.g. 0.95 for 95 %, or leave it unset"
            )
        gain = self.plateau_min_gain
        if not 0.0 <= gain < 1.0:
            hint = f"; {gain:g} points is {gain / 100:g}" if 1.0 <= gain <= 100.0 else ""
            raise ValueError(
                f"stopping.plateau_min_gain {gain:g} is not an accuracy gain in [0, 1){hint}: "
                "set e.g. 0.005 for half a point"
            )
        return self


class PollingSettings(_Section):
    label_studio_seconds: float = Field(15.0, gt=0, description="Annotation poll interval.")
    storage_seconds: float = Field(300.0, gt=0, description="Pool listing interval.")
    watch_seconds: float = Field(60.0, gt=0, description="Stall watch interval.")
    overlap_seconds: float = Field(
        60.0, ge=0, description="Re-read window before the watermark, so nothing is missed."
    )


class AlertSettings(_Section):
    task_stall_hours: float = Field(24.0, gt=0, description="Alert on tasks open this long.")
    round_stall_hours: float = Field(72.0, gt=0, description="Alert on rounds open this long.")
    webhook_url: SecretStr | None = Field(
        None,
        description="POST each alert here as JSON (kind, severity, message, items, tasks, "
        "round, first_seen, last_seen, resolved_at).",
    )
    slack_webhook_url: SecretStr | None = Field(
        None,
        description="A Slack-compatible incoming webhook (JSON with `text`; Mattermost and "
        "Teams workflows accept it too).",
    )
    apprise_urls: list[SecretStr] = Field(
        default_factory=list,
        description="More services as Apprise URLs (e.g. `mailto://...`, `tgram://...`).",
    )
    renotify_minutes: float = Field(
        240.0, gt=0, description="Re-send an alert whose condition still holds this often."
    )
    notify_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of one notifier call (retried, then left for later)."
    )
    throughput_window_hours: float = Field(
        1.0, gt=0, description="Labels per hour are measured over this recent window..."
    )
    throughput_baseline_hours: float = Field(
        24.0, gt=0, description="...and compared with the rate over this longer window."
    )
    throughput_drop_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Alert when the recent rate falls below this fraction of the baseline "
        "while a batch is open.",
    )
    throughput_min_labels: int = Field(
        20, ge=1, description="Labels the baseline needs before a drop is judged."
    )


class StateSettings(_Section):
    dir: Path = Field(Path("state"), description="State db, rounds/ and the labeled cache.")
    cache_max_mb: float = Field(2048.0, gt=0, description="Bound of the labeled-item cache.")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Health and metrics server host.")
    port: int | None = Field(9108, ge=0, le=65535, description="Port; unset = no server.")


class Settings(BaseModel):
    """Everything the connector needs, validated as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    storage: StorageSettings = Field(
        default_factory=lambda: StorageSettings(kind="local", local_root=Path("pool"))
    )
    labels: LabelsSettings = Field(default_factory=LabelsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    rounds: RoundSettings = Field(default_factory=RoundSettings)
    stopping: StoppingSettings = Field(default_factory=StoppingSettings)
    polling: PollingSettings = Field(default_factory=PollingSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @model_validator(mode="after")
    def _stopping_fits(self) -> Settings:
        budget = self.stopping.max_labels
        if budget is not None and budget <= self.validation.size:
            raise ValueError(
                f"stopping.max_labels {budget} is not more than validation.size "
                f"{self.validation.size}: the validation split alone would stop every round "
                "before the first training; raise stopping.max_labels or lower validation.size"
            )
        return self

    # Paths: relative ones are resolved against the settings file's folder.
    def rounds_dir(self) -> Path:
        return self.state.dir / "rounds"

    def db_path(self) -> Path:
        return self.state.dir / "state.db"

    def cache_dir(self) -> Path:
        return self.state.dir / "cache"

    def encoder_path(self) -> Path:
        """The self-supervised encoder (``model.pretrain``), rewritten at each refresh."""
        return self.state.dir / "encoder" / "encoder.pt"


def section_models() -> dict[str, type[BaseModel]]:
    """Section name -> its model, in file order."""
    out = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out[section] = model
    return out
