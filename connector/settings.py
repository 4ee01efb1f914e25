"""Typed settings: one TOML file plus environment overrides, validated at start-up.

This is the only module that reads the environment (house rule 2). Every value can come
from the TOML file (``[section] key = value``) and be overridden by an environment
variable ``ALC_<SECTION>__<KEY>`` (e.g. ``ALC_LABEL_STUDIO__TOKEN``). Secrets come from
the environment or from files (``token_file``), never from logs: they are ``SecretStr``.
Object-storage credentials may also come from the usual AWS chain (``AWS_*`` variables,
profiles, instance roles), which boto3 reads itself.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from connector.contracts.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "ALC_"
ENV_NESTED = "__"
#: Environment variable naming the settings file when ``--config`` is not given.
CONFIG_ENV = "ALC_CONFIG"


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
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout per request, seconds.")

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
    presign_urls: bool = Field(
        True,
        description="Label Studio hands browsers presigned URLs to the bucket; false when "
        "browsers cannot reach the endpoint (Label Studio then proxies the images).",
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


class ModelSettings(_Section):
    arch: str = Field(
        "small_cnn", description="small_cnn, resnet18, mobilenet_v3_small, efficientnet_b0."
    )
    weights: str | None = Field(
        None, description="torchvision weights name or a local weights file."
    )
    freeze_backbone: bool = Field(False, description="Train only the classifier head.")
    image_size: int = Field(32, ge=8, le=1024, description="Input side in pixels.")
    channels: int | None = Field(None, description="1 or 3; unset = from the images.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Head dropout (MC dropout).")
    ensemble_size: int = Field(1, ge=1, le=16, description="Deep-ensemble members.")
    mc_samples: int | None = Field(
        None,
        ge=1,
        le=100,
        description="MC-dropout passes K when scoring; unset = 20 for strategies that read "
        "the disagreement between passes (bald, batchbald, ...), 1 for the others.",
    )
    epochs: int | None = Field(None, ge=1, description="Training epochs; unset = adaptive.")
    batch_size: int | None = Field(None, ge=1, description="Training batch; unset = adaptive.")
    learning_rate: float | None = Field(None, gt=0, description="Unset = the trainer's default.")
    seed: int = Field(0, description="Seed of training and selection.")


class StrategySettings(_Section):
    name: str = Field("entropy", description="Acquisition strategy (see docs/strategies.md).")
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
    min_labeled_fraction: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Start the next round when this fraction of the batch is done.",
    )
    interval_minutes: float | None = Field(
        None, gt=0, description="Also start a round on this schedule, if anything is new."
    )
    max_rounds: int | None = Field(None, ge=1, description="Stop after this many rounds.")
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
    webhook_url: SecretStr | None = Field(None, description="POST alerts here as JSON.")


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
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    rounds: RoundSettings = Field(default_factory=RoundSettings)
    polling: PollingSettings = Field(default_factory=PollingSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    # Paths: relative ones are resolved against the settings file's folder.
    def rounds_dir(self) -> Path:
        return self.state.dir / "rounds"

    def db_path(self) -> Path:
        return self.state.dir / "state.db"

    def cache_dir(self) -> Path:
        return self.state.dir / "cache"


def load_settings(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), apply ``ALC_*`` environment overrides, validate.

    Raises ``ConfigError`` with every problem and its fix named, never a raw traceback.
    ``environ`` replaces ``os.environ`` (tests); ``overrides`` is a nested dict applied
    over the file (CLI flags).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    data: dict[str, Any] = {}
    base_dir: Path | None = None
    if path is not None:
        file = Path(path)
        base_dir = file.resolve().parent
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"settings file {file} does not exist; pass --config PATH or set {CONFIG_ENV} "
                "(see deploy/settings.example.toml)"
            ) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"settings file {file} is not valid TOML: {exc}; fix it") from None
    if overrides:
        data = _deep_merge(data, dict(overrides))
    data = _deep_merge(data, _env_overrides(env))
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None
    if base_dir is not None:
        settings = _resolve_paths(settings, base_dir)
    return settings


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return base / p

    state = settings.state.model_copy(update={"dir": fix(settings.state.dir)})
    storage = settings.storage.model_copy(
        update={
            "local_root": fix(settings.storage.local_root),
            "local_document_root": fix(settings.storage.local_document_root),
        }
    )
    ls = settings.label_studio.model_copy(
        update={"token_file": fix(settings.label_studio.token_file)}
    )
    return settings.model_copy(update={"state": state, "storage": storage, "label_studio": ls})


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``ALC_SECTION__KEY=value`` variables as a nested dict (lists/dicts as JSON)."""
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or ENV_NESTED not in name:
            continue
        if value == "":
            # An empty variable (compose's ${VAR:-}) means "not set": the file or default rules.
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split(ENV_NESTED)]
        parsed: Any = value
        if value.startswith(("[", "{")):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f'{name} looks like JSON but does not parse; write e.g. {name}=\'["a", "b"]\''
                ) from None
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name} conflicts with another ALC_ variable; remove one")
        node[parts[-1]] = parsed
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError, path: Path | str | None) -> str:
    where = f" in {path}" if path is not None else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting; check its spelling against docs/settings.md"
        env_name = ENV_PREFIX + ENV_NESTED.join(p.upper() for p in loc)
        lines.append(f"  {dotted}: {msg} (set it in the TOML file or as {env_name})")
    return "\n".join(lines)


def settings_reference() -> str:
    """The settings reference as Markdown, generated from the model so it cannot drift."""
    out = [
        "# Settings reference",
        "",
        "Generated from `connector/settings.py` by `al-connector settings-doc`; do not edit.",
        "",
        f"Every key can be set in the TOML file or overridden by the environment variable "
        f"`{ENV_PREFIX}<SECTION>{ENV_NESTED}<KEY>`.",
        "",
    ]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out += [
            f"## [{section}]",
            "",
            "| key | type | default | env | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, sub in model.model_fields.items():
            default = (
                ""
                if sub.is_required()
                else _fmt_default(sub.get_default(call_default_factory=True))
            )
            typ = _fmt_type(sub.annotation)
            env = f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{key.upper()}"
            desc = (sub.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {typ} | {default} | `{env}` | {desc} |")
        out.append("")
    return "\n".join(out)


def env_variable_names() -> set[str]:
    """Every ``ALC_*`` variable the settings accept (for checking deploy files)."""
    names = {CONFIG_ENV}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key in model.model_fields:
            names.add(f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{key.upper()}")
    return names


def _fmt_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, (list, dict)) and not value:
        return "empty"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _fmt_type(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{a}`" for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    return text.replace("|", "or")
