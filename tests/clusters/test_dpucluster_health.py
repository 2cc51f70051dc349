"""DPUCluster status against the real apiservers: Created/Ready and the phase from the health check.

The controller runs in-process against the bed's host apiserver; a static DPUCluster's kubeconfig Secret
points at a real apiserver (the second bed, `dpu_kube`, or the host one), or at a loopback port nobody
listens on. Every wait is bounded; the health period is short so a Secret change is seen quickly (there is
no Secret watch: the controller may only `get` Secrets).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import VersionApi

from dpf.controller.kube.rest import SECRET, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.dpucluster import KEY
from dpf.controller.reconcilers.kinds import DPU, DPU_CLUSTER, NODE
from dpf.controller.settings import DPUClusterSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import free_port
from tests.controlplane.harness import controller_settings, eventually, host_rest, run, started

INTERNAL_FINALIZER = "provisioning.dpu.nvidia.com/cluster-manager-internal-clean-up"
MANAGER_FINALIZER = "provisioning.dpu.nvidia.com/cluster-manager-clean-up"


def _controller(kube: ControlPlane, namespace: str, period: float = 1.0) -> Controller:
    settings = controller_settings(kube.kubeconfig, namespace)
    return Controller(dataclasses.replace(
        settings, dpucluster=DPUClusterSettings(health_period=period, health_timeout=3.0)))


def _admin_conf(kubeconfig: Path, server: str | None = None) -> str:
    document = yaml.safe_load(kubeconfig.read_text())
    if server is not None:
        document["clusters"][0]["cluster"]["server"] = server
    return base64.b64encode(yaml.safe_dump(document).encode()).decode()


async def _secret(rest: Rest, namespace: str, name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": data}
    if await rest.get(SECRET, name, namespace) is None:
        await rest.create(SECRET, body, namespace)
    else:
        await rest.replace(SECRET, body)


async def _cluster(rest: Rest, namespace: str, name: str, type_: str = "static", kubeconfig: str | None = None,
                   **metadata: Any) -> Obj:
    spec: dict[str, Any] = {"type": type_, "version": "v1.30.2", "maxNodes": 10}
    if kubeconfig:
        spec["kubeconfig"] = kubeconfig
    return await rest.create(DPU_CLUSTER, {"apiVersion": DPU_CLUSTER.api_version, "kind": "DPUCluster",
                                           "metadata": {"name": name, "namespace": namespace, **metadata},
                                           "spec": spec}, namespace)


def _count(histogram: Any) -> float:
    return next(m.value for metric in histogram.collect() for m in metric.samples if m.name.endswith("_count"))


def _condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return c
    return {}


async def _state(rest: Rest, namespace: str, name: str, phase: str, **reasons: str) -> Obj | None:
    """The DPUCluster once it shows `phase` and each condition type in `reasons` with that reason."""
    obj = await rest.get(DPU_CLUSTER, name, namespace)
    if obj is None or (obj.get("status") or {}).get("phase") != phase:
        return None
    if any(_condition(obj, t).get("reason") != r for t, r in reasons.items()):
        return None
    return obj


def test_static_cluster_passes_pending_creating_ready_and_counts_nodes_and_dpus(
        kube: ControlPlane, dpu_kube: ControlPlane, namespace: str) -> None:
    """The Secret points at the second apiserver: Ready with its version, its Node count and the DPUs assigned;
    a Node joining updates the message at once (not only on the next period); unchanged, nothing is rewritten."""
    async def scenario() -> None:
        rest, dpu_rest = await host_rest(kube.kubeconfig), await host_rest(dpu_kube.kubeconfig)
        node = f"dpu-{uuid.uuid4().hex[:6]}"
        controller = await started(_controller(kube, namespace, period=60.0))
        try:
            version = (await VersionApi(dpu_rest.api).get_code()).git_version
            await _secret(rest, namespace, "remote-admin", {KEY: _admin_conf(dpu_kube.kubeconfig)})
            created = await _cluster(rest, namespace, "remote", kubeconfig="remote-admin")
            await rest.create(DPU, {"apiVersion": DPU.api_version, "kind": "DPU",
                                    "metadata": {"name": "dpu-a", "namespace": namespace},
                                    "spec": {"nodeName": "host-a", "bfb": "bfb",
                                             "cluster": {"name": "remote"}}}, namespace)

            async def ready_and_counted() -> Obj | None:
                obj = await _state(rest, namespace, "remote", "Ready", Created="Created", Ready="HealthCheckPassed")
                # Ready may be written once before the DPU cluster's Nodes are listed ("not yet listed").
                return obj if obj and re.search(r"\d+ Nodes", _condition(obj, "Ready")["message"]) else None
            ready = await eventually(ready_and_counted, "the cluster Ready with its Nodes counted")
            message = _condition(ready, "Ready")["message"]
            nodes = len((await dpu_rest.list(NODE))["items"])
            assert f"Kubernetes {version} (spec.version v1.30.2)" in message, message
            assert f"{nodes} Nodes, 1 DPUs assigned of maxNodes 10" in message, message
            assert "Secret" in _condition(ready, "Created")["message"]

            # Every phase written, in order: a watch from the creation's resourceVersion replays them.
            phases = []
            async for event in rest.watch(DPU_CLUSTER, created["metadata"]["resourceVersion"], 1, namespace):
                phase = ((event["object"].get("status") or {}).get("phase"))
                if event["type"] != "BOOKMARK" and (not phases or phases[-1] != phase):
                    phases.append(phase)
            assert phases == ["Creating", "Ready"], phases  # Pending is the object as created

            # A Node joins: recounted on the Node event, well before the 60 s period.
            await dpu_rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})

            async def counted() -> bool:
                obj = await rest.get(DPU_CLUSTER, "remote", namespace)
                return f"{nodes + 1} Nodes" in _condition(obj, "Ready")["message"]
            await eventually(counted, "the new Node counted", timeout=10.0)
            recounted = await rest.get(DPU_CLUSTER, "remote", namespace)
            assert _condition(recounted, "Ready")["lastTransitionTime"] == _condition(ready, "Ready")[
                "lastTransitionTime"], "Ready stayed True: its transition time stays"
        finally:
            await controller.stop()
            await dpu_rest.delete(NODE, node)
            await rest.close()
            await dpu_rest.close()

    run(scenario())


def test_periodic_checks_leave_a_steady_status_unchanged(kube: ControlPlane, namespace: str) -> None:
    """Re-checked every period, a healthy cluster's status does not move (no transition time, message or
    phase change: resourceVersion stays)."""
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(_controller(kube, namespace, period=0.3))
        try:
            await _secret(rest, namespace, "self-admin", {KEY: _admin_conf(kube.kubeconfig)})
            await _cluster(rest, namespace, "self", kubeconfig="self-admin")
            async def settled() -> Obj | None:  # Ready, and its Nodes counted (first Ready may say "not yet listed")
                obj = await _state(rest, namespace, "self", "Ready", Ready="HealthCheckPassed")
                return obj if obj and "not yet listed" not in _condition(obj, "Ready")["message"] else None

            ready = await eventually(settled, "the cluster Ready with its Nodes counted")
            reconciles = controller.metrics.reconcile_seconds.labels("dpucluster")
            before = _count(reconciles)
            await asyncio.sleep(1.5)  # five health periods
            assert _count(reconciles) - before >= 3, "the cluster is re-checked every period"
            again = await rest.get(DPU_CLUSTER, "self", namespace)
            assert again["metadata"]["resourceVersion"] == ready["metadata"]["resourceVersion"], \
                "an unchanged cluster's status is not written again every period"
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


def test_closed_port_is_not_ready_and_a_fixed_secret_makes_it_ready_without_restart(
        kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        port = free_port()
        controller = await started(_controller(kube, namespace))
        try:
            await _secret(rest, namespace, "flaky-admin",
                          {KEY: _admin_conf(kube.kubeconfig, f"https://127.0.0.1:{port}")})
            await _cluster(rest, namespace, "flaky", kubeconfig="flaky-admin")
            failed = await eventually(lambda: _state(rest, namespace, "flaky", "NotReady", Created="Created",
                                                     Ready="HealthCheckFailed"), "the cluster NotReady")
            ready = _condition(failed, "Ready")
            assert ready["status"] == "False"
            assert f"https://127.0.0.1:{port}/version" in ready["message"], ready["message"]
            assert re.search(r"[Cc]onnect", ready["message"]), ready["message"]

            # The Secret is fixed: Ready again, same controller.
            await _secret(rest, namespace, "flaky-admin", {KEY: _admin_conf(kube.kubeconfig)})
            fixed = await eventually(lambda: _state(rest, namespace, "flaky", "Ready", Ready="HealthCheckPassed"),
                                     "the cluster Ready after the Secret is fixed")
            assert _condition(fixed, "Ready")["status"] == "True"

            # A server that accepts the connection and never answers fails within health_timeout.
            with socket.create_server(("127.0.0.1", 0)) as silent:
                silent_port = silent.getsockname()[1]
                await _secret(rest, namespace, "silent-admin",
                              {KEY: _admin_conf(kube.kubeconfig, f"https://127.0.0.1:{silent_port}")})
                await _cluster(rest, namespace, "silent", kubeconfig="silent-admin")
                hung = await eventually(lambda: _state(rest, namespace, "silent", "NotReady",
                                                       Ready="HealthCheckFailed"), "the silent cluster NotReady")
                assert "no answer within 3s" in _condition(hung, "Ready")["message"], _condition(hung, "Ready")

            # And a Ready cluster whose apiserver goes away degrades to NotReady.
            await _secret(rest, namespace, "flaky-admin",
                          {KEY: _admin_conf(kube.kubeconfig, f"https://127.0.0.1:{port}")})
            await eventually(lambda: _state(rest, namespace, "flaky", "NotReady", Ready="HealthCheckFailed"),
                             "the Ready cluster NotReady once its Secret points nowhere")
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


def test_created_false_names_what_is_missing_and_kamaji_says_it_is_not_implemented(
        kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(_controller(kube, namespace))
        try:
            await _cluster(rest, namespace, "empty")
            await _cluster(rest, namespace, "later", kubeconfig="later-admin")
            await _cluster(rest, namespace, "kamaji", type_="kamaji")
            await _secret(rest, namespace, "broken-admin", {"kubeconfig": _admin_conf(kube.kubeconfig)})
            await _cluster(rest, namespace, "broken", kubeconfig="broken-admin")

            empty = await eventually(lambda: _state(rest, namespace, "empty", "Pending", Created="EmptyKubeconfig",
                                                    Ready="ClusterNotCreated"), "EmptyKubeconfig")
            assert _condition(empty, "Created")["status"] == "False"
            assert "spec.kubeconfig is empty" in _condition(empty, "Created")["message"]

            missing = await eventually(lambda: _state(rest, namespace, "later", "Pending",
                                                      Created="KubeconfigSecretNotFound"), "the Secret missing")
            message = _condition(missing, "Created")["message"]
            assert f"Secret {namespace}/later-admin" in message, message
            assert KEY in message, message

            broken = await eventually(lambda: _state(rest, namespace, "broken", "Pending",
                                                     Created="KubeconfigInvalid"), "the Secret without admin.conf")
            message = _condition(broken, "Created")["message"]
            assert f"{namespace}/broken-admin" in message, message
            assert f"no data key '{KEY}'" in message, message

            kamaji = await eventually(lambda: _state(rest, namespace, "kamaji", "Pending",
                                                     Created="KamajiNotImplemented"), "kamaji refused")
            message = _condition(kamaji, "Created")["message"]
            assert "spec.type kamaji" in message, message
            assert "only static" in message, message
            assert _condition(kamaji, "Ready")["status"] == "False"

            # The missing Secret appears: picked up by the periodic re-check, no restart.
            await _secret(rest, namespace, "later-admin", {KEY: _admin_conf(kube.kubeconfig)})
            await eventually(lambda: _state(rest, namespace, "later", "Ready", Created="Created",
                                            Ready="HealthCheckPassed"), "the cluster Ready once its Secret exists")
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())


def test_upstream_finalizers_do_not_block_deletion(kube: ControlPlane, namespace: str) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        controller = await started(_controller(kube, namespace))
        try:
            await _secret(rest, namespace, "gone-admin", {KEY: _admin_conf(kube.kubeconfig)})
            await _cluster(rest, namespace, "gone", kubeconfig="gone-admin",
                           finalizers=[MANAGER_FINALIZER, INTERNAL_FINALIZER])
            await eventually(lambda: _state(rest, namespace, "gone", "Ready"), "the cluster Ready")
            assert f"{namespace}/gone" in controller.clusters.dpu
            await rest.delete(DPU_CLUSTER, "gone", namespace)

            async def gone() -> bool:
                return await rest.get(DPU_CLUSTER, "gone", namespace) is None
            await eventually(gone, "the DPUCluster deleted")
            assert f"{namespace}/gone" not in controller.clusters.dpu, "the DPU-cluster client is closed"
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())
