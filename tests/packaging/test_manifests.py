"""The controller's manifests against the real apiserver: every file is accepted on its own and as a
kustomization, the Deployment's command line is one the controller's own argparse takes (and agrees with its
ports, probes, volume and Service), and its pod passes the restricted Pod Security Standard."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from dpf.controller import cli as controller_cli
from dpf.lab.bed.kube import ControlPlane
from tests.packaging.rbac import CRDS, DPU_CLUSTER_MANIFESTS, MANIFESTS, NAMESPACE, documents, listed_files


def by_kind(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents(path) if d["kind"] == kind]
    return doc


def test_kustomizations_list_every_file() -> None:
    for directory in (MANIFESTS, DPU_CLUSTER_MANIFESTS):
        on_disk = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(p.name for p in listed_files(directory)) == on_disk, f"{directory}/kustomization.yaml"
    crds = documents(CRDS / "Kustomization")
    assert sorted(crds[0]["resources"]) == sorted(p.name for p in CRDS.glob("*.yaml")), \
        "packaging/crds/Kustomization must list every CRD file (crdgen added or removed one?)"


def test_every_file_is_accepted_alone_and_as_a_kustomization(installed: ControlPlane) -> None:
    kube = installed
    # The fixture applied each file with `kubectl apply --server-side -f`; each object is there.
    for path in listed_files(MANIFESTS) + listed_files(DPU_CLUSTER_MANIFESTS):
        names = kube.kubectl("get", "-f", str(path), "-o", "name").stdout.split()
        assert len(names) == len(documents(path)), f"{path.name}: {names}"
    # The kustomizations, CRDs included, as the apiserver would take them (server-side dry run).
    for directory in (MANIFESTS, DPU_CLUSTER_MANIFESTS):
        out = kube.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(directory)).stdout
        for path in listed_files(directory):
            for doc in documents(path):
                assert f"/{doc['metadata']['name']} serverside-applied" in out, out
    rendered = kube.kubectl("kustomize", str(MANIFESTS)).stdout
    crds = [d for p in CRDS.glob("*.yaml") for d in documents(p) if d["kind"] == "CustomResourceDefinition"]
    assert rendered.count("\nkind: CustomResourceDefinition\n") == len(crds) > 0


def controller_args(deployment: dict[str, Any]) -> tuple[dict[str, Any], argparse.Namespace]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["dpf"]
    parser = argparse.ArgumentParser(prog="dpf")  # the top level of dpf/cli.py, with the controller's commands
    controller_cli.register(parser.add_subparsers(dest="command", required=True))
    return container, parser.parse_args(container["args"])


def test_deployment_command_line_parses_and_matches_its_pod() -> None:
    deployment = by_kind(MANIFESTS / "deployment.yaml", "Deployment")
    service = by_kind(MANIFESTS / "service.yaml", "Service")
    container, args = controller_args(deployment)
    assert args.run is controller_cli._run, "the args must select `dpf controller run`"
    settings = controller_cli.settings_from(args)

    assert settings.kube.kubeconfig is None, "in the cluster the controller uses its ServiceAccount"
    assert settings.kube.namespace == deployment["metadata"]["namespace"] == NAMESPACE
    assert settings.kube.watch_namespace is None, "DPF objects may live in any namespace"
    assert settings.leader.enabled
    assert deployment["spec"]["replicas"] == 2
    assert not settings.tls.insecure
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(settings.server.listen.rsplit(":", 1)[1]) == ports["grpc"]
    assert int(settings.http.listen.rsplit(":", 1)[1]) == ports["health"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (5443, "grpc")
    name = service["metadata"]["name"]
    for dns in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc"):
        assert dns in settings.tls.server_names, f"the server certificate must name {dns}"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert str(settings.bfb.directory) == mounts["bfb"] == "/bfb"
    assert volumes["bfb"]["persistentVolumeClaim"]["claimName"] == "bfb-pvc"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "dpf-controller"


def test_deployment_pod_meets_the_restricted_pod_security_standard(installed: ControlPlane, namespace: str) -> None:
    kube = installed
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # Pod admission wants the pod's ServiceAccount to exist in the namespace.
    kube.kubectl("create", "serviceaccount", "dpf-controller", "-n", namespace)
    template = by_kind(MANIFESTS / "deployment.yaml", "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dpf-controller", "namespace": namespace,
                                                           "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}

    def admit(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)

    accepted = admit(pod)
    assert accepted.returncode == 0, accepted.stderr
    # The same pod running as root is refused: the namespace really enforces the standard.
    rooted = copy.deepcopy(pod)
    del rooted["spec"]["securityContext"]["runAsNonRoot"]
    rooted["spec"]["securityContext"]["runAsUser"] = 0
    refused = admit(rooted)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr
