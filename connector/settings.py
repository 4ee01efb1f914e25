"""Typed settings: one TOML file, CLI overrides and the environment, validated at start-up.

This is the only module that reads the environment (house rule 2), and only in
``load_settings``: never at import, never when code builds ``Settings(**values)``. A value
comes from the file (``[section] key = value``), the overrides (CLI flags) over it, or an
environment variable ``ALC_<SECTION>__<KEY>`` (e.g. ``ALC_LABEL_STUDIO__TOKEN``) over both.
Secrets come from the environment or from files (``token_file``) and are ``SecretStr``;
boto3 reads the usual AWS chain (``AWS_*``, profiles, instance roles) itself.

pydantic-settings reads and layers those sources, so the rules are a maintained library's,
documented and tested there, not a hand-written overlay's: its TOML source reads the file,
its environment source splits ``ALC_SECTION__KEY`` names and decodes JSON only for list and
table settings (a template such as ``{path}`` stays a string), and it deep-merges the
sources in order. Kept here is what it does not do: one ``ConfigError`` naming every problem
and its fix, "did you mean" for misspelt sections, keys and variables (it would silently
ignore an unknown ``ALC_`` section), and relative paths resolved against the file's folder.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from connector.contracts.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "ALC_"
ENV_NESTED = "__"
#: Environment variable naming the settings file when ``--config`` is not given.
CONFIG_ENV = "ALC_CONFIG"
_SPELLING = "check its spelling against docs/settings.md"


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


#: What the current ``load_settings`` call reads: the setting variables and the file.
_INPUTS: ContextVar[tuple[Mapping[str, str], Path | None]] = ContextVar("_INPUTS")


class _Layers(BaseSettings, Settings):
    """``Settings`` built by pydantic-settings from the sources of one ``load_settings``.

    A subclass (the pattern of the library's own ``CliApp``), so that ``Settings(**values)``
    stays a plain model that reads nothing. Section names match exactly, as they always did.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        variables, file = _INPUTS.get()  # highest priority first; init_settings = overrides
        env = _VariablesSource(settings_cls, variables)
        if file is None:
            return env, init_settings
        return env, init_settings, TomlConfigSettingsSource(settings_cls, toml_file=file)


class _VariablesSource(EnvSettingsSource):
    """The library's environment source over the given variables instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables
        super().__init__(
            settings_cls,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED,
            env_ignore_empty=True,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # As the library prepares os.environ: names lower-cased, empty values dropped.
        return {k.lower(): v for k, v in self._variables.items() if v or not self.env_ignore_empty}


def load_settings(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), the ``overrides`` over it, ``ALC_*`` variables over both.

    Raises ``ConfigError`` with every problem and its fix named, never a raw traceback.
    ``environ`` replaces ``os.environ`` (tests); ``overrides`` is a nested dict (CLI flags).
    An empty variable is not set; lists and tables in variables are JSON.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    file = None if path is None else Path(path)
    if file is not None and not file.is_file():
        raise ConfigError(
            f"settings file {file} {'is not a file' if file.exists() else 'does not exist'}; "
            f"pass --config PATH or set {CONFIG_ENV} (see deploy/settings.example.toml)"
        )
    variables, problems = _setting_variables(env)
    reset = _INPUTS.set((variables, file))
    try:
        layers = _Layers(**dict(overrides or {}))
    except ValidationError as exc:
        problems = _explain(exc) + problems
    except SettingsError as exc:  # it names the section only; name the variable
        problems = (_not_json(variables) or [f"  {exc}"]) + problems
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings file {file} is not valid TOML: {exc}; fix it") from None
    except OSError as exc:
        raise ConfigError(f"settings file {file} cannot be read ({exc.strerror}); fix it") from None
    finally:
        _INPUTS.reset(reset)
    if problems:
        where = f" in {path}" if path is not None else ""
        raise ConfigError("\n".join([f"invalid settings{where}:", *problems]))
    settings = Settings(**{name: getattr(layers, name) for name in Settings.model_fields})
    return settings if file is None else _resolve_paths(settings, file.resolve().parent)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    update = {}
    for section, keys in _FILE_RELATIVE.items():
        model = getattr(settings, section)
        paths = {key: getattr(model, key) for key in keys}
        fixed = {k: base / p for k, p in paths.items() if p is not None and not p.is_absolute()}
        update[section] = model.model_copy(update=fixed)
    return settings.model_copy(update=update)


_FILE_RELATIVE = {
    "state": ("dir",),
    "storage": ("local_root", "local_document_root"),
    "label_studio": ("token_file",),
}


def _setting_variables(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The ``ALC_<SECTION>__<KEY>`` variables that name a setting, and a problem per other.

    ``ALC_`` variables without ``__`` (``ALC_CONFIG``, the tests' ``ALC_TEST_*``) are not
    settings; the library would read ``ALC_<SECTION>`` as a whole section, so it never sees them.
    """
    sections = _sections()
    known: dict[str, str] = {}
    problems: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or ENV_NESTED not in upper:
            continue
        section, _, rest = upper[len(ENV_PREFIX) :].lower().partition(ENV_NESTED)
        key = rest.split(ENV_NESTED)[0]
        fields = sections[section].model_fields if section in sections else {}
        if key in fields and (key == rest or get_origin(fields[key].annotation) is dict):
            known[name] = value  # a key, or an entry of a table (ALC_LABELS__MAP__CAT)
            continue
        if value == "":  # not set, so not a problem either
            continue
        guess = section if fields else _closest(section, sections)
        keys = sections[guess].model_fields if guess else {}
        near = rest if rest in keys else key if key in keys else _closest(rest, keys)
        hint = f"did you mean {_env_name(guess, near)}?" if guess and near else _SPELLING
        where = f"{section}.{rest.replace(ENV_NESTED, '.')}" if fields else section
        problems.append(f"  {where}: unknown setting {name}; {hint}")
    return known, problems


def _explain(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: {_unknown_in_file(loc)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        env = _env_name(*loc[:2]) if len(loc) > 1 else ""
        hint = f" (set it in the TOML file or as {env})" if env in env_variable_names() else ""
        lines.append(f"  {dotted}: {msg}{hint}")
    return lines


def _unknown_in_file(loc: tuple[str, ...]) -> str:
    sections = _sections()
    if len(loc) == 1:
        guess = _closest(loc[0], sections)
        return f"unknown section [{loc[0]}]; " + (
            f"did you mean [{guess}]?" if guess else _SPELLING
        )
    guess = _closest(loc[1], sections[loc[0]].model_fields) if loc[0] in sections else None
    return "unknown setting; " + (f"did you mean {loc[0]}.{guess}?" if guess else _SPELLING)


def _not_json(variables: Mapping[str, str]) -> list[str]:
    """A problem per variable of a list or table setting whose value is not JSON."""
    lines = []
    for name, value in variables.items():
        section, _, key = name.upper()[len(ENV_PREFIX) :].lower().partition(ENV_NESTED)
        field = _sections()[section].model_fields.get(key)
        kind = field and get_origin(field.annotation)
        try:
            json.loads(value)
        except ValueError:
            if kind in (list, dict):
                example = '["a", "b"]' if kind is list else '{"a": "b"}'
                lines.append(f"  {section}.{key}: {name} is not JSON; write {name}='{example}'")
    return lines


def _closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1)
    return found[0] if found else None


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{key.upper()}"


def _sections() -> dict[str, type[BaseModel]]:
    """Section name -> its model, in file order."""
    out = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        out[section] = model
    return out


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
    for section, model in _sections().items():
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
            desc = (sub.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {typ} | {default} | `{_env_name(section, key)}` | {desc} |")
        out.append("")
    return "\n".join(out)


def env_variable_names() -> set[str]:
    """Every ``ALC_*`` variable the settings accept (for checking deploy files)."""
    names = {CONFIG_ENV}
    for section, model in _sections().items():
        names.update(_env_name(section, key) for key in model.model_fields)
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
