"""The `kube` fixture is a real, working control plane: versioned, RBAC'd, with CRDs and a GC."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until

BFB = {"group": "provisioning.dpu.nvidia.com", "version": "v1alpha1", "plural": "bfbs"}


def bfb(name: str) -> dict:
    return {"apiVersion": "provisioning.dpu.nvidia.com/v1alpha1", "kind": "BFB",
            "metadata": {"name": name},
            "spec": {"url": "http://bfb-server.dpf-operator-system/bf-bundle-2.9.1-35_24.11_ubuntu-22.04_prod.bfb"}}


def test_apiserver_is_the_pinned_build(kube: ControlPlane) -> None:
    assert kube.version() == "v1.37.2"


def test_custom_resource_create_and_read(kube: ControlPlane, namespace: str) -> None:
    api = k8s.CustomObjectsApi(kube.client)
    api.create_namespaced_custom_object(namespace=namespace, body=bfb("doca-2-9"), **BFB)
    got = api.get_namespaced_custom_object(namespace=namespace, name="doca-2-9", **BFB)
    assert got["spec"]["url"].endswith(".bfb")
    assert got["metadata"]["uid"]
    listed = kube.kubectl("get", "bfbs", "-n", namespace, "-o", "name").stdout.split()
    assert listed == ["bfb.provisioning.dpu.nvidia.com/doca-2-9"]


def test_unauthenticated_requests_are_refused(kube: ControlPlane) -> None:
    config = k8s.Configuration(host=kube.server)
    config.ssl_ca_cert = kube.client.configuration.ssl_ca_cert  # trust the server, present no client cert
    anonymous = k8s.ApiClient(config)
    with pytest.raises(ApiException) as refused:
        k8s.CoreV1Api(anonymous).list_namespace()
    assert refused.value.status in (401, 403)


def test_garbage_collector_cascades_owner_references(kube: ControlPlane, namespace: str) -> None:
    core = k8s.CoreV1Api(kube.client)
    owner = core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner")))
    ref = k8s.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owned", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", namespace)
    names = lambda: {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}  # noqa: E731
    wait_until(lambda: "owned" not in names(), 30, "the garbage collector to delete the dependent")


def test_second_cluster_is_independent(kube: ControlPlane, dpu_kube: ControlPlane, namespace: str) -> None:
    assert dpu_kube.server != kube.server
    k8s.CoreV1Api(kube.client).create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="only-on-host")))
    dpu_namespaces = {n.metadata.name for n in k8s.CoreV1Api(dpu_kube.client).list_namespace().items}
    assert namespace not in dpu_namespaces
    assert "bfbs.provisioning.dpu.nvidia.com" in dpu_kube.kubectl("get", "crd", "-o", "name").stdout
