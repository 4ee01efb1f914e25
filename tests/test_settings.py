"""Settings: TOML + ALC_ environment overrides, validation errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.contracts.errors import ConfigError
from connector.settings import env_variable_names, load_settings, settings_reference

GOOD = """
[label_studio]
url = "http://ls:8080"
project_id = 3

[storage]
kind = "s3"
bucket = "pool"
prefix = "images/"
endpoint_url = "http://minio:9000"

[labels]
classes = ["cat", "dog"]
map = { Cat = "cat", Dog = "dog" }

[strategy]
name = "bald"
batch_size = 50
params = { beta = 1.0 }

[state]
dir = "state"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), environ={})
    assert s.label_studio.project_id == 3
    assert s.storage.bucket == "pool" and s.storage.prefix == "images/"
    assert s.strategy.name == "bald" and s.strategy.params == {"beta": 1.0}
    assert s.labels.map["Cat"] == "cat"
    assert s.state.dir == tmp_path / "state", "relative paths resolve next to the file"


def test_environment_overrides_file(tmp_path: Path) -> None:
    env = {
        "ALC_STRATEGY__BATCH_SIZE": "7",
        "ALC_LABEL_STUDIO__TOKEN": "s3cr3t-token",
        "ALC_LABELS__CLASSES": '["cat", "dog", "bird"]',
        "ALC_TEST_LABEL_STUDIO_BIN": "/ignored/no/double/underscore",
        "ALC_STORAGE__PREFIX": "",
    }
    s = load_settings(write(tmp_path, GOOD), environ=env)
    assert s.strategy.batch_size == 7
    assert s.storage.prefix == "images/", "an empty variable leaves the file's value"
    assert s.labels.classes == ["cat", "dog", "bird"]
    assert s.label_studio.resolved_token().get_secret_value() == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(s) and "s3cr3t-token" not in str(s)


def test_token_from_file_and_missing_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    s = load_settings(write(tmp_path, GOOD), environ={"ALC_LABEL_STUDIO__TOKEN_FILE": str(token)})
    assert s.label_studio.resolved_token().get_secret_value() == "abc"
    s = load_settings(write(tmp_path, GOOD), environ={})
    with pytest.raises(ConfigError, match="ALC_LABEL_STUDIO__TOKEN"):
        s.label_studio.resolved_token()


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[storage]\nkind = 's3'\n", {}, r"storage.bucket is not set"),
        ("[strategy]\nbatch_size = 0\n", {}, r"strategy.batch_size: .*ALC_STRATEGY__BATCH_SIZE"),
        ("[strategy]\nbatchsize = 3\n", {}, r"strategy.batchsize: unknown setting"),
        ("[labels]\nclasses = ['a']\nmap = { X = 'b' }\n", {}, r"not in labels.classes"),
        ("[strategy\nname = 1\n", {}, r"not valid TOML"),
        ("", {"ALC_ROUNDS__MIN_LABELED_FRACTION": "2"}, r"rounds.min_labeled_fraction"),
        ("", {"ALC_NOSUCH__KEY": "1"}, r"nosuch: unknown setting"),
    ],
)
def test_bad_settings_name_the_fix(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, text), environ=env)


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_reference_lists_every_variable() -> None:
    text = settings_reference()
    for name in env_variable_names() - {"ALC_CONFIG"}:
        assert f"`{name}`" in text
    assert "ALC_LABEL_STUDIO__TOKEN" in env_variable_names()


def test_generated_reference_is_committed() -> None:
    committed = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert committed.read_text().strip() == settings_reference().strip(), (
        "docs/settings.md is stale; run `al-connector settings-doc -o docs/settings.md`"
    )
