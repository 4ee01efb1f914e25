"""Typed settings: one TOML file, CLI overrides and the environment, validated at start-up.

Three modules, each owning one thing: ``models`` the section models and ``Settings`` (pure
pydantic, reads nothing; ``[scoring]``'s model is in ``scoring``), ``loader``
``load_settings`` (the only module that reads the environment: the sources, their
layering and the "did you mean" checks), and ``reference`` the names outside the code
(``ALC_*`` variables, the docs/settings.md reference).
Import from here; the names below are the package's public ones.
"""

from connector.settings.loader import load_settings
from connector.settings.models import (
    AlertSettings,
    LabelsSettings,
    LabelStudioSettings,
    ModelSettings,
    PollingSettings,
    RoundSettings,
    ServerSettings,
    Settings,
    StateSettings,
    StoppingSettings,
    StorageSettings,
    StrategySettings,
    ValidationSettings,
)
from connector.settings.reference import (
    CONFIG_ENV,
    ENV_NESTED,
    ENV_PREFIX,
    env_variable_names,
    settings_reference,
)
from connector.settings.scoring import ScoringSettings

__all__ = [
    "CONFIG_ENV",
    "ENV_NESTED",
    "ENV_PREFIX",
    "AlertSettings",
    "LabelStudioSettings",
    "LabelsSettings",
    "ModelSettings",
    "PollingSettings",
    "RoundSettings",
    "ScoringSettings",
    "ServerSettings",
    "Settings",
    "StateSettings",
    "StoppingSettings",
    "StorageSettings",
    "StrategySettings",
    "ValidationSettings",
    "env_variable_names",
    "load_settings",
    "settings_reference",
]
