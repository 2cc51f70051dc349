"""Helpers for the packaging tests: the manifest files, ServiceAccount tokens and kubeconfigs made from them
(TokenRequest API), and `kubectl auth can-i` as a given identity."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.tools import REPO

MANIFESTS = REPO / "packaging" / "manifests"
DPU_CLUSTER_MANIFESTS = MANIFESTS / "dpu-cluster"
CRDS = REPO / "packaging" / "crds"
NAMESPACE = "dpf-operator-system"
CONTROLLER_SA = "dpf-controller"
DPU_CLUSTER_SA = "dpf-controller-dpu-cluster"


def user(service_account: str, namespace: str = NAMESPACE) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def listed_files(directory: Path) -> list[Path]:
    """The YAML files a kustomization lists, in its order (other kustomizations, like ../crds, left out)."""
    document = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / entry for entry in document["resources"] if entry.endswith(".yaml")]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def token_kubeconfig(kube: ControlPlane, service_account: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A kubeconfig for `service_account` with a bearer token from the TokenRequest API and the bed's CA."""
    token = kube.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    ca = Path(admin["clusters"][0]["cluster"]["certificate-authority"]).read_bytes()
    return {"apiVersion": "v1", "kind": "Config", "current-context": service_account,
            "clusters": [{"name": "bed", "cluster": {"server": kube.server,
                                                     "certificate-authority-data": base64.b64encode(ca).decode()}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": service_account, "context": {"cluster": "bed", "user": service_account}}]}


def can_i(kube: ControlPlane, as_user: str, *args: str) -> bool:
    """`kubectl auth can-i ARGS --as=USER`: yes or no (anything else fails the test)."""
    result = kube.kubectl("auth", "can-i", *args, f"--as={as_user}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def can_i_list(kube: ControlPlane, as_user: str, namespace: str) -> list[dict[str, str]]:
    """`kubectl auth can-i --list`, one dict per row keyed by the header's column names."""
    lines = kube.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={as_user}").stdout.splitlines()
    header = lines[0]
    names = ["Resources", "Non-Resource URLs", "Resource Names", "Verbs"]
    starts = [header.index(name) for name in names]
    rows = []
    for line in lines[1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows
