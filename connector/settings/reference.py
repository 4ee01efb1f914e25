"""How the settings are named outside the code: the environment variable names and the
Markdown reference (docs/settings.md), both generated from the models so neither drifts.

Names only: ``ALC_<SECTION>__<KEY>`` for every key, and ``ALC_CONFIG`` for the file. Nothing
here reads the environment; ``loader`` does, with these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import SecretStr

from connector.settings.models import section_models

ENV_PREFIX = "ALC_"
ENV_NESTED = "__"
#: Environment variable naming the settings file when ``--config`` is not given.
CONFIG_ENV = "ALC_CONFIG"


def env_name(section: str, key: str) -> str:
    """The variable that sets ``section.key``: ``ALC_<SECTION>__<KEY>``."""
    return f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{key.upper()}"


def settings_reference() -> str:
    """The settings reference as Markdown, generated from the model so it cannot drift."""
    out = [
        "# Settings reference",
        "",
        "Generated from `connector/settings/models.py` by `al-connector settings-doc`; "
        "do not edit.",
        "",
        f"Every key can be set in the TOML file or overridden by the environment variable "
        f"`{ENV_PREFIX}<SECTION>{ENV_NESTED}<KEY>`.",
        "",
    ]
    for section, model in section_models().items():
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
            out.append(f"| `{key}` | {typ} | {default} | `{env_name(section, key)}` | {desc} |")
        out.append("")
    return "\n".join(out)


def env_variable_names() -> set[str]:
    """Every ``ALC_*`` variable the settings accept (for checking deploy files)."""
    names = {CONFIG_ENV}
    for section, model in section_models().items():
        names.update(env_name(section, key) for key in model.model_fields)
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
