"""pod-label-policy.yaml and role.yaml against the real apiserver: the controller's ServiceAccount may patch Pods
in dpf-operator-system (for the leader label the Service selects) but may change nothing else on them: not
another label, not an annotation, not a container image; and what LeaderLabel sends passes both."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from kubernetes.config import new_client_from_config

from dpf.controller.kube import clients
from dpf.controller.kube.leader_label import LEADER_LABEL, LeaderLabel
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import wait_until
from tests.packaging.rbac import CONTROLLER_SA, MANIFESTS, NAMESPACE, can_i, documents, token_kubeconfig, user

REFUSAL = f"dpf-controller may only set or remove the label {LEADER_LABEL}=true on Pods"


def test_controller_may_move_the_leader_label_and_nothing_else(installed: ControlPlane) -> None:
    kube = installed
    controller = user(CONTROLLER_SA)
    assert can_i(kube, controller, "list", "pods", "-n", NAMESPACE)
    assert can_i(kube, controller, "patch", "pods", "-n", NAMESPACE)
    assert not can_i(kube, controller, "patch", "pods", "-n", "default"), "its own namespace only"
    assert not can_i(kube, controller, "create", "pods", "-n", NAMESPACE)
    (deployment,) = [d for d in documents(MANIFESTS / "deployment.yaml") if d["kind"] == "Deployment"]
    name = f"dpf-controller-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE,
                                                           **deployment["spec"]["template"]["metadata"]},
           "spec": deployment["spec"]["template"]["spec"]}
    kube.kubectl("create", "-f", "-", input=yaml.safe_dump(pod))

    # As the controller, with the official client (kubectl would first GET the Pod, which the controller may not).
    api = k8s.CoreV1Api(new_client_from_config(str(kube.kubeconfig)))
    api.api_client.set_default_header("Impersonate-User", user(CONTROLLER_SA))

    def as_controller(patch: dict[str, Any]) -> str:
        """A strategic merge patch of the Pod as the controller; "" when allowed, else the apiserver's message."""
        try:
            api.patch_namespaced_pod(name, NAMESPACE, patch, _content_type="application/strategic-merge-patch+json")
        except ApiException as exc:
            return f"{exc.status}: {json.loads(exc.body).get('message', exc.body)}"
        return ""

    def labels(value: str | None, **more: str | None) -> dict[str, Any]:
        return {"metadata": {"labels": {LEADER_LABEL: value, **more}}}

    try:
        wait_until(lambda: REFUSAL in as_controller(labels(None, **{"app.kubernetes.io/name": "evil"})),
                   30, "the pod label policy in force (policies load asynchronously)")
        assert as_controller(labels("true")) == ""
        assert as_controller(labels(None)) == ""
        assert REFUSAL in as_controller(labels("false"))
        assert REFUSAL in as_controller(labels("true", extra="1"))
        assert REFUSAL in as_controller({"metadata": {"annotations": {"note": "1"}}})
        assert REFUSAL in as_controller({"spec": {"containers": [{"name": "controller",
                                                                  "image": "attacker/image:latest"}]}})
        # An admin is not limited by it.
        assert kube.kubectl("label", "pod", name, "-n", NAMESPACE, "extra=1").returncode == 0
    finally:
        api.api_client.close()
        kube.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false", check=False)


def test_leader_label_works_on_exactly_the_controllers_rights(installed: ControlPlane, tmp_path: Path) -> None:
    """The requests LeaderLabel really sends (merge patches, a labelled list), on the controller's own token:
    the leader labels its Pod and takes the label off another; as a follower it drops its own."""
    kube = installed
    (deployment,) = [d for d in documents(MANIFESTS / "deployment.yaml") if d["kind"] == "Deployment"]
    names = [f"dpf-controller-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name, extra in zip(names, ({}, {LEADER_LABEL: "true"}), strict=True):
        template = deployment["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NAMESPACE,
                            "labels": {**template["metadata"]["labels"], **extra}},
               "spec": template["spec"]}
        kube.kubectl("create", "-f", "-", input=yaml.safe_dump(pod))
    config = tmp_path / "controller.kubeconfig"
    config.write_text(yaml.safe_dump(token_kubeconfig(kube, CONTROLLER_SA)))

    def leader_labelled() -> dict[str, bool]:
        pods = json.loads(kube.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", *names).stdout)["items"]
        return {p["metadata"]["name"]: LEADER_LABEL in (p["metadata"].get("labels") or {}) for p in pods}

    async def as_controller(leading: bool) -> None:
        rest = await clients.from_kubeconfig_file(config, "controller")
        try:
            await LeaderLabel(rest, NAMESPACE, names[0], retry=0.1).sync(leading)
        finally:
            await rest.close()

    try:
        asyncio.run(as_controller(True))
        assert leader_labelled() == {names[0]: True, names[1]: False}
        asyncio.run(as_controller(False))
        assert leader_labelled() == {names[0]: False, names[1]: False}
    finally:
        kube.kubectl("delete", "pod", *names, "-n", NAMESPACE, "--wait=false", check=False)
