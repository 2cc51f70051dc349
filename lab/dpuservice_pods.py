"""What the lab's DPUServices (`hbn_service.py`, `service_pods.py`) share: finding a DPUService's pod on a DPU node
and its Multus network-status, and deleting the DPUService on teardown (the controller uninstalls its Helm release
before it lets the object go).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
DELETE_TIMEOUT = 120.0


def pods_on(cluster: ControlPlane, namespace: str, service: str, node: str) -> list[Any]:
    """The pods of DPUService `service` on `node`, by the service label the controller puts on its pods."""
    return list(k8s.CoreV1Api(cluster.client).list_namespaced_pod(
        namespace, label_selector=f"{chains.SERVICE_LABEL}={service}", field_selector=f"spec.nodeName={node}").items)


def network_status(pod: Any) -> list[dict[str, Any]] | None:
    """Multus' network-status of a pod that is Running and not being deleted; None otherwise."""
    meta = pod.metadata
    if pod.status is None or pod.status.phase != "Running" or meta is None or meta.deletion_timestamp is not None:
        return None
    annotations = meta.annotations or {}
    if NETWORK_STATUS not in annotations:
        return None
    return list(json.loads(annotations[NETWORK_STATUS]))


def delete(host: ControlPlane, namespace: str, service: str, say: Callable[[str], None]) -> None:
    """Delete the DPUService and wait until it is gone: the controller uninstalls its Helm release (the DaemonSet and
    its pods go) before it drops the finalizer. Never raises: the rest of the teardown runs."""
    try:
        result = host.kubectl("delete", "dpuservice", service, "-n", namespace, "--ignore-not-found",
                              "--wait=true", f"--timeout={DELETE_TIMEOUT:.0f}s", check=False,
                              timeout=DELETE_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        say(f"DPUService {service} not deleted within {DELETE_TIMEOUT:.0f}s")
        return
    if result.returncode != 0:
        say(f"DPUService {service} not deleted: {result.stderr.strip()}")
    elif result.stdout.strip():
        say(f"DPUService {service} deleted: its Helm release uninstalled from the DPU cluster")
