"""Settings: TOML + ALC_ environment overrides, validation errors that name the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from connector.contracts.errors import ConfigError
from connector.settings import Settings, env_variable_names, load_settings, settings_reference

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
        ("[scoring]\nengine = 'spark'\n", {}, r"scoring.engine: Input should be 'local' or 'ray'"),
        ("[scoring]\nray_address = ' '\n", {}, r"ray_address is empty; set \"local\""),
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


def test_unknown_section_in_the_file_suggests_the_closest(tmp_path: Path) -> None:
    text = GOOD + "\n[valdation]\nsize = 5\n"
    with pytest.raises(
        ConfigError, match=r"unknown section \[valdation\]; did you mean \[validation\]\?"
    ):
        load_settings(write(tmp_path, text), environ={})


def test_unknown_key_in_the_file_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"strategy\.nmae: .*did you mean strategy\.name\?"
    ) as err:
        load_settings(write(tmp_path, "[strategy]\nnmae = 'bald'\n"), environ={})
    assert "ALC_STRATEGY__NMAE" not in str(err.value), "it names a variable that does not exist"


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        pytest.param("ALC_VALDATION__SIZE", "ALC_VALIDATION__SIZE", id="section"),
        pytest.param("ALC_STRATEGY__NMAE", "ALC_STRATEGY__NAME", id="key"),
    ],
)
def test_unknown_variable_suggests_the_closest(tmp_path: Path, name: str, suggested: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown setting {name}; did you mean {suggested}\?"):
        load_settings(write(tmp_path, GOOD), environ={name: "5"})


def test_every_problem_at_once_naming_only_real_variables(tmp_path: Path) -> None:
    text = "[valdation]\nsize = 5\n[strategy]\nnmae = 'bald'\nbatch_size = 0\n"
    env = {
        "ALC_NOSUCH__KEY": "1",
        "ALC_ROUNDS__MIN_LABELED_FRACTION": "2",
        "ALC_STRATEGY__NMAE": "x",
    }
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ=env)
    message = str(err.value)
    for problem in ("[valdation]", "strategy.nmae", "strategy.batch_size", "min_labeled_fraction"):
        assert problem in message
    assert "ALC_NOSUCH__KEY; check its spelling" in message, "nothing close: no guess"
    assert "ALC_STRATEGY__NMAE; did you mean ALC_STRATEGY__NAME?" in message
    invented = set(re.findall(r"ALC_\w+", message)) - env_variable_names() - set(env)
    assert not invented, f"the message names variables that do not exist: {invented}"


def test_alc_variables_without_double_underscore_are_not_settings(tmp_path: Path) -> None:
    env = {
        "ALC_CONFIG": str(write(tmp_path, GOOD)),
        "ALC_TEST_LABEL_STUDIO_BIN": "/opt/label-studio",
        "ALC_LABELS": '{"classes": ["x"]}',
        "ALC_STORAGE": "not json",
    }
    s = load_settings(environ=env)
    assert s.labels.classes == ["cat", "dog"] and s.storage.bucket == "pool"


def test_environment_over_overrides_over_file(tmp_path: Path) -> None:
    overrides = {"strategy": {"batch_size": 10, "name": "margin"}, "validation": {"size": 3}}
    env = {"ALC_STRATEGY__BATCH_SIZE": "7"}
    s = load_settings(write(tmp_path, GOOD), environ=env, overrides=overrides)
    assert s.strategy.batch_size == 7, "the environment wins over overrides and the file"
    assert s.strategy.name == "margin" and s.validation.size == 3, "overrides win over the file"
    assert s.strategy.params == {"beta": 1.0}, "a section is merged key by key"
    assert s.label_studio.project_id == 3


def test_only_list_and_table_variables_are_json(tmp_path: Path) -> None:
    env = {
        "ALC_STORAGE__KIND": "local",
        "ALC_STORAGE__LOCAL_ROOT": "/pool",
        "ALC_STORAGE__LOCAL_URL_TEMPLATE": "{path}",
        "ALC_LABELS__MAP": '{"Kitty": "cat"}',
    }
    s = load_settings(write(tmp_path, GOOD), environ=env)
    assert s.storage.local_url_template == "{path}", "a string setting is never decoded"
    assert s.labels.map == {"Cat": "cat", "Dog": "dog", "Kitty": "cat"}, "tables merge"
    with pytest.raises(
        ConfigError, match=r"labels\.classes: ALC_LABELS__CLASSES is not JSON; write"
    ):
        load_settings(write(tmp_path, GOOD), environ={"ALC_LABELS__CLASSES": '["cat", '})


def test_building_settings_in_code_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALC_STRATEGY__NAME", "margin")
    assert Settings().strategy.name == "badge"
    assert Settings(strategy={"batch_size": 3}).strategy.name == "badge"


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


def test_only_the_loader_reads_the_environment() -> None:
    # House rule 2: of the settings package, only loader touches os (environ, getenv).
    package = Path(__file__).resolve().parents[1] / "connector" / "settings"
    readers = sorted(
        path.name
        for path in package.glob("*.py")
        if re.search(r"^\s*(import os\b|from os\b)", path.read_text(), re.MULTILINE)
    )
    assert readers == ["loader.py"]


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        pytest.param("ALC_VALIDATION_SIZE", "ALC_VALIDATION__SIZE", id="one-underscore"),
        pytest.param("ALC_VALDATION_SIZE", "ALC_VALIDATION__SIZE", id="misspelt-section"),
        pytest.param("ALC_LABEL_STUDIO_TOKN", "ALC_LABEL_STUDIO__TOKEN", id="misspelt-key"),
    ],
)
def test_a_variable_with_one_underscore_is_not_ignored(
    tmp_path: Path, name: str, suggested: str
) -> None:
    """A setting written with ``_`` where ``__`` belongs would leave the default in place
    without a word; it is named, with the real variable."""
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD), environ={name: "5", "ALC_TEST_LABEL_STUDIO_BIN": "x"})
    message = str(err.value)
    assert f"unknown setting {name}; did you mean {suggested}?" in message
    assert "ALC_<SECTION>__<KEY>" in message
    invented = set(re.findall(r"ALC_[A-Z_]+[A-Z]", message)) - env_variable_names() - {name}
    assert not invented, f"the message names variables that do not exist: {invented}"
