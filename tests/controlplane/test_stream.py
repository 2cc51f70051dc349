"""End to end over the real apiserver and real gRPC with mTLS: a CR change reaches the right agent only,
a NACK turns into a condition and an Event, and status reports are folded in."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp

from dpf.controller.cache.serviceinterfaces import TYPE_URL
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE, SERVICE_INTERFACE_SET
from dpf.lab.bed.kube import ControlPlane

from .harness import (
    InterfaceHandler,
    agent,
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    node_files,
    run,
    service_interface,
    service_interface_set,
    started,
    stop_task,
)


def test_cr_change_reaches_only_the_node_it_names(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = Controller(controller_settings(kube.kubeconfig, namespace))
        await started(controller)
        suffix = uuid.uuid4().hex[:6]
        node_a, node_b = f"dpu-a-{suffix}", f"dpu-b-{suffix}"
        handler_a, handler_b = InterfaceHandler(), InterfaceHandler()
        agent_a = agent(node_a, [controller.grpc_port], tmp_path / "a",
                        await node_files(rest, namespace, node_a, "dpu", tmp_path / "certs-a"), handler_a)
        agent_b = agent(node_b, [controller.grpc_port], tmp_path / "b",
                        await node_files(rest, namespace, node_b, "dpu", tmp_path / "certs-b"), handler_b)
        tasks = [asyncio.create_task(agent_a.run()), asyncio.create_task(agent_b.run())]
        try:
            # Both converge on their (empty) state first.
            for node in (node_a, node_b):
                await eventually(lambda n=node: controller.nodes.get(n) and controller.nodes.get(n).connected
                                 and controller.nodes.get(n).of(TYPE_URL).acked_version, f"{node} in sync")
            responses_b = agent_b.metrics.responses.labels(TYPE_URL)._value.get()

            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplink", node_a, "p0"), namespace)
            await eventually(lambda: handler_a.ports == {f"{namespace}/uplink": "p0"}, "node A programs p0")
            await eventually(lambda: controller.nodes.get(node_a).of(TYPE_URL).acked.get(f"{namespace}/uplink"),
                             "the controller sees node A's ACK")

            await rest.merge_patch(SERVICE_INTERFACE, "uplink", {"spec": {"physical": {"interfaceName": "p1"}}},
                                   namespace)
            await eventually(lambda: handler_a.ports == {f"{namespace}/uplink": "p1"}, "node A moves to p1")
            assert handler_a.calls[-1] == (frozenset({f"{namespace}/uplink"}), frozenset()), \
                "an update is delivered as a delta naming only the changed interface"

            await rest.delete(SERVICE_INTERFACE, "uplink", namespace)
            await eventually(lambda: handler_a.ports == {}, "node A removes the interface")
            assert handler_a.calls[-1] == (frozenset(), frozenset({f"{namespace}/uplink"}))

            # Node B never received anything after its initial sync, and programmed nothing.
            assert agent_b.metrics.responses.labels(TYPE_URL)._value.get() == responses_b
            assert handler_b.ports == {}
            # Health, readiness and metrics: connected agents, stream lag, reconcile latency.
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{controller.http_port}"
                async with http.get(f"{base}/readyz") as ready:
                    assert ready.status == 200
                    assert (await ready.text()).strip() == "leader"
                async with http.get(f"{base}/healthz") as healthy:
                    assert healthy.status == 200
                async with http.get(f"{base}/metrics") as scrape:
                    text = await scrape.text()
            assert 'dpf_controller_connected_agents{role="dpu"} 2.0' in text
            assert "dpf_controller_stream_lag_seconds_count" in text
            assert 'dpf_controller_reconcile_duration_seconds_count{reconciler="serviceinterface"}' in text
            # 2 initial syncs + create, patch, delete on node A; the last ACK may still be on the wire.
            await eventually(lambda: controller.metrics.acks.labels(TYPE_URL)._value.get() >= 5, "five ACKs counted")
        finally:
            for task in tasks:
                await stop_task(task)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_nack_becomes_a_condition_and_an_event(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = Controller(controller_settings(kube.kubeconfig, namespace))
        await started(controller)
        node = f"dpu-n-{uuid.uuid4().hex[:6]}"
        handler = InterfaceHandler()
        runtime = agent(node, [controller.grpc_port], tmp_path / "state",
                        await node_files(rest, namespace, node, "dpu", tmp_path / "certs"), handler)
        task = asyncio.create_task(runtime.run())
        try:
            owner = await rest.create(SERVICE_INTERFACE_SET, service_interface_set(namespace, "uplinks"), namespace)
            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplinks-1", node, "bad0", owner=owner),
                              namespace)

            async def condition() -> dict | None:
                sis = await rest.get(SERVICE_INTERFACE_SET, "uplinks", namespace)
                return next((c for c in (sis.get("status") or {}).get("conditions") or ()
                             if c["type"] == "ServiceInterfacesReady"), None)

            rejected = await eventually(lambda: _is(condition(), "False", "Failure"), "the NACK as a condition")
            assert f"node {node} rejected {namespace}/uplinks-1" in rejected["message"]
            assert "interface name 'bad0' is not allowed on this DPU" in rejected["message"]
            assert handler.ports == {}, "a rejected state is not applied"

            events = await eventually(lambda: _events(rest, namespace, "uplinks-1"), "a Warning Event on the SI")
            assert events[0]["reason"] == "AgentRejected"
            assert events[0]["type"] == "Warning"
            assert "interface name 'bad0' is not allowed" in events[0]["note"]

            # The same version is never re-sent: the agent saw exactly one response for it.
            assert runtime.metrics.nacks.labels(TYPE_URL)._value.get() == 1

            # Fixing the object clears the condition.
            await rest.merge_patch(SERVICE_INTERFACE, "uplinks-1", {"spec": {"physical": {"interfaceName": "p0"}}},
                                   namespace)
            ready = await eventually(lambda: _is(condition(), "True", "Success"), "the condition to turn True")
            assert ready["message"] == ""
            assert handler.ports == {f"{namespace}/uplinks-1": "p0"}
        finally:
            await stop_task(task)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_transient_apply_failure_is_reported_not_nacked(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = Controller(controller_settings(kube.kubeconfig, namespace))
        await started(controller)
        node = f"dpu-t-{uuid.uuid4().hex[:6]}"
        handler = InterfaceHandler()
        handler.fail_transiently = "ovs-vswitchd is restarting"
        runtime = agent(node, [controller.grpc_port], tmp_path / "state",
                        await node_files(rest, namespace, node, "dpu", tmp_path / "certs"), handler)
        task = asyncio.create_task(runtime.run())
        try:
            owner = await rest.create(SERVICE_INTERFACE_SET, service_interface_set(namespace, "set"), namespace)
            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "set-1", node, "p0", owner=owner),
                              namespace)

            async def condition() -> dict | None:
                sis = await rest.get(SERVICE_INTERFACE_SET, "set", namespace)
                return next((c for c in (sis.get("status") or {}).get("conditions") or ()
                             if c["type"] == "ServiceInterfacesReady"), None)

            failing = await eventually(lambda: _is(condition(), "False", "Error"), "the status report as a condition")
            assert f"node {node} failed to apply {namespace}/set-1: ovs-vswitchd is restarting" in failing["message"]
            assert runtime.metrics.nacks.labels(TYPE_URL)._value.get() == 0
            handler.fail_transiently = ""
            await eventually(lambda: _is(condition(), "True", "Success"), "recovery after the retry")
            assert handler.ports == {f"{namespace}/set-1": "p0"}
        finally:
            await stop_task(task)
            await controller.stop()
            await rest.close()

    run(scenario())


async def _is(condition: object, status: str, reason: str) -> dict | None:
    found = await condition  # type: ignore[misc]
    return found if found and found["status"] == status and found["reason"] == reason else None


async def _events(rest: object, namespace: str, name: str) -> list[dict]:
    from dpf.controller.kube.rest import EVENT

    listing = await rest.list(EVENT, namespace)  # type: ignore[attr-defined]
    return [e for e in listing["items"] if e["regarding"]["name"] == name]


def test_dpu_cluster_is_reached_through_the_dpucluster_secret(kube: ControlPlane, dpu_kube: ControlPlane,
                                                              namespace: str, tmp_path: Path) -> None:
    """Two apiservers: the DPUCluster lives in the host cluster, the ServiceInterface in the DPU cluster."""

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        dpu_rest = await host_rest(dpu_kube.kubeconfig)
        await dpu_cluster(rest, namespace, dpu_kube.kubeconfig, name="dpu-remote")
        controller = await started(Controller(controller_settings(kube.kubeconfig, namespace)))
        node = f"dpu-x-{uuid.uuid4().hex[:6]}"
        handler = InterfaceHandler()
        runtime = agent(node, [controller.grpc_port], tmp_path / "state",
                        await node_files(rest, namespace, node, "dpu", tmp_path / "certs"), handler)
        task = asyncio.create_task(runtime.run())
        remote_ns = f"remote-{uuid.uuid4().hex[:6]}"
        from dpf.controller.kube.rest import Kind

        namespaces = Kind("", "v1", "namespaces", "Namespace", namespaced=False)
        await dpu_rest.create(namespaces, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": remote_ns}})
        try:
            assert f"{namespace}/dpu-remote" in controller.clusters.dpu
            await dpu_rest.create(SERVICE_INTERFACE, service_interface(remote_ns, "uplink", node, "p0"), remote_ns)
            await eventually(lambda: handler.ports == {f"{remote_ns}/uplink": "p0"}, "the DPU cluster's object")
            assert await rest.get(SERVICE_INTERFACE, "uplink", remote_ns) is None, "it is not in the host cluster"
        finally:
            await stop_task(task)
            await controller.stop()
            await dpu_rest.delete(namespaces, remote_ns)
            await rest.close()
            await dpu_rest.close()

    run(scenario())
