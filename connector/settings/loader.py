"""Loading the settings: one TOML file, CLI overrides and the environment, validated at start-up.

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
from typing import Any, get_origin

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from connector.contracts.errors import ConfigError
from connector.settings.models import Settings, section_models
from connector.settings.reference import (
    CONFIG_ENV,
    ENV_NESTED,
    ENV_PREFIX,
    env_name,
    env_variable_names,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_SPELLING = "check its spelling against docs/settings.md"


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
    sections = section_models()
    known: dict[str, str] = {}
    problems: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if ENV_NESTED not in upper:
            problems += _single_underscore(name, value, sections)
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
        hint = f"did you mean {env_name(guess, near)}?" if guess and near else _SPELLING
        where = f"{section}.{rest.replace(ENV_NESTED, '.')}" if fields else section
        problems.append(f"  {where}: unknown setting {name}; {hint}")
    return known, problems


def _single_underscore(name: str, value: str, sections: Mapping[str, Any]) -> list[str]:
    """A problem if ``name`` reads as a setting with one ``_`` where ``__`` belongs
    (``ALC_VALIDATION_SIZE``, ``ALC_VALDATION_SIZE``): silently ignored, it would leave the
    default in place. Other ``ALC_`` names (``ALC_CONFIG``, ``ALC_TEST_*``) are not settings."""
    rest = name.upper()[len(ENV_PREFIX) :].lower()
    if value == "" or "_" not in rest or rest.startswith("test_"):
        return []
    for cut in (i for i, ch in enumerate(rest) if ch == "_"):
        head, key = rest[:cut], rest[cut + 1 :]
        section = head if head in sections else _closest(head, sections)
        keys = sections[section].model_fields if section else {}
        if section and (key in keys or (head in sections and _closest(key, keys))):
            real = env_name(section, key if key in keys else str(_closest(key, keys)))
            return [
                f"  {section}: unknown setting {name}; did you mean {real}? (a setting's "
                f"variable is {ENV_PREFIX}<SECTION>{ENV_NESTED}<KEY>, two underscores)"
            ]
    return []


def _explain(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: {_unknown_in_file(loc)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        env = env_name(*loc[:2]) if len(loc) > 1 else ""
        hint = f" (set it in the TOML file or as {env})" if env in env_variable_names() else ""
        lines.append(f"  {dotted}: {msg}{hint}")
    return lines


def _unknown_in_file(loc: tuple[str, ...]) -> str:
    sections = section_models()
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
        field = section_models()[section].model_fields.get(key)
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
