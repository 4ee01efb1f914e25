"""deploy/kubernetes/kuberay/raycluster.yaml: the KubeRay example for [scoring] engine = "ray".

No cluster or operator is needed: the file is parsed and checked against what it must
agree with (the ray pin, the connector's image and Secret, the address the settings
example names), and its pod templates against Kubernetes' own schemas.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import _constraints, _image_tag

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
RAYCLUSTER = K8S / "kuberay" / "raycluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d is not None]
    assert len(docs) == 1
    return dict(docs[0])


def _templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in _templates(cluster) for c in t["spec"]["containers"]]


def test_it_is_a_raycluster_of_the_pinned_ray(cluster: dict[str, Any]) -> None:
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])
    assert cluster["spec"]["rayVersion"] == _constraints()["ray"]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"ray[client]=={_constraints()['ray']}" in extra["optional-dependencies"]["ray"]


def test_its_pods_run_the_connector_image_with_ray(cluster: dict[str, Any]) -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    connector = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    repository, tag = connector.rsplit(":", 1)
    for container in _containers(cluster):
        assert container["image"] == f"{repository}:{tag}-ray", container["name"]
        assert _image_tag(container["image"]) not in {"", "latest"}


def test_the_settings_example_names_its_client_address(cluster: dict[str, Any]) -> None:
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    client = next(p["containerPort"] for p in head["ports"] if p["name"] == "client")
    address = f"ray://{cluster['metadata']['name']}-head-svc:{client}"
    example = (ROOT / "deploy" / "settings.example.toml").read_text()
    assert f'# ray_address = "{address}"' in example
    assert f'ray_address = "{address}"' in RAYCLUSTER.read_text()


def test_worker_credentials_come_from_the_connectors_secret(cluster: dict[str, Any]) -> None:
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())
    keys = set(secret["stringData"])
    for container in _containers(cluster):
        for env in container.get("env", []):
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys


def test_it_stays_out_of_the_kustomization() -> None:
    # Optional: applying the base must not need the KubeRay CRDs.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not any("kuberay" in r for r in kustomization["resources"])


def test_its_pod_templates_match_the_pod_schema(cluster: dict[str, Any]) -> None:
    validate = pytest.importorskip("kubernetes_validate").validate
    for template in _templates(cluster):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **template}
        pod["metadata"] = {"name": "x", **template.get("metadata", {})}
        validate(pod, "1.30.0", strict=True)
