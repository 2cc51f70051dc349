"""The objects of the lab's service-chain scenario, shared by `./dev lab` and the end-to-end tests: the
hbn_only manifests (`manifests/hbn_only.yaml`), the DPUCluster that points the controller at the DPU
cluster, the DPU Nodes as a kubeadm join leaves them, and the HBN pod object on a DPU node.

Also small readers over the official Kubernetes client (conditions, existence) for waiting on them.
"""

from __future__ import annotations

import base64
import json
import string
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

MANIFESTS = Path(__file__).resolve().parent / "manifests"
SVC = ("svc.dpu.nvidia.com", "v1alpha1")
GROUP_LABEL = "dpf.lab/group"
HBN_LABEL = "dpf.lab/hbn"
SERVICE_LABEL = "svc.dpu.nvidia.com/service"
HBN_SERVICE = "doca-hbn"

Obj = dict[str, Any]


def hbn_only(namespace: str, group: str) -> list[Obj]:
    """The hbn_only interfaces and chain for the DPUs labelled dpf.lab/group=`group`."""
    text = string.Template((MANIFESTS / "hbn_only.yaml").read_text()).substitute(NAMESPACE=namespace, GROUP=group)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def to_yaml(objects: list[Obj]) -> str:
    """A YAML stream for kubectl, each document written as JSON: every string stays quoted. (PyYAML leaves a
    string such as 093396 unquoted, being no valid YAML 1.1 octal, and kubectl's YAML reads it as the integer
    93396: a label value made of digits was refused as "expected string".)"""
    return "".join(f"---\n{json.dumps(o)}\n" for o in objects)


def dpu_cluster(namespace: str, name: str, admin_conf: bytes) -> list[Obj]:
    """A static DPUCluster and the Secret holding the DPU cluster's admin kubeconfig (key admin.conf)."""
    secret = f"{name}-admin-kubeconfig"
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": namespace},
         "data": {"admin.conf": base64.b64encode(admin_conf).decode()}},
        {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "DPUCluster",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"type": "static", "version": "v1.37.2", "kubeconfig": secret}},
    ]


def dpu_node(name: str, group: str, hbn: bool) -> Obj:
    """A DPU-cluster Node as kubeadm join leaves it, with the labels chain node selectors use."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64",
              GROUP_LABEL: group}
    if hbn:
        labels[HBN_LABEL] = "true"
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def hbn_pod(namespace: str, name: str, node: str) -> list[Obj]:
    """The HBN service pod object on a DPU node (what its DaemonSet would create; no kubelet runs it here, the
    end-to-end tests plug its network namespace through the CNI plugin instead; the lab runs DPUService doca-hbn,
    `hbn_service.py`), and the namespace's default
    ServiceAccount that pod admission requires (the lab runs no service-account controller)."""
    return [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": namespace, "labels": {SERVICE_LABEL: HBN_SERVICE}},
             "spec": {"nodeName": node, "automountServiceAccountToken": False,
                      "containers": [{"name": "hbn", "image": "nvcr.io/nvidia/doca/doca_hbn:2.4.1-doca2.9.1"}]}}]


class Reader:
    """Reads svc.* objects and their conditions through the official client."""

    def __init__(self, api: ApiClient) -> None:
        self.custom = k8s.CustomObjectsApi(api)

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            # The client types the decoded JSON body as `object`; a custom object is a JSON object.
            return cast(Obj, self.custom.get_namespaced_custom_object(*SVC, namespace, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, plural: str, namespace: str) -> list[Obj]:
        listing = cast(Obj, self.custom.list_namespaced_custom_object(*SVC, namespace, plural))  # see get
        return listing["items"]

    def condition(self, plural: str, namespace: str, name: str, type_: str = "Ready") -> Obj | None:
        obj = self.get(plural, namespace, name)
        return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or () if c["type"] == type_),
                    None)

    def is_ready(self, plural: str, namespace: str, name: str) -> bool:
        found = self.condition(plural, namespace, name)
        return found is not None and found["status"] == "True"
