"""Restarts: a controller restart makes agents reconnect without re-applying unchanged state; an agent
restart re-asserts its stored state with the controller down and resumes from its stored versions."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from dpf.controller.cache.serviceinterfaces import TYPE_URL
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import free_port

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
    started,
    stop_task,
)


def test_controller_restart_does_not_reapply_unchanged_state(kube: ControlPlane, namespace: str,
                                                             tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        port = free_port()
        settings = controller_settings(kube.kubeconfig, namespace, port)
        controller = Controller(settings)
        await started(controller)
        node = f"dpu-r-{uuid.uuid4().hex[:6]}"
        handler = InterfaceHandler()
        runtime = agent(node, [port], tmp_path / "state",
                        await node_files(rest, namespace, node, "dpu", tmp_path / "certs"), handler)
        task = asyncio.create_task(runtime.run())
        try:
            for i in range(3):
                await rest.create(SERVICE_INTERFACE, service_interface(namespace, f"if{i}", node, f"p{i}"), namespace)
            await eventually(lambda: len(handler.ports) == 3, "three interfaces programmed")
            applies, responses = len(handler.calls), runtime.metrics.responses.labels(TYPE_URL)._value.get()
            assert runtime.state.connects == 1

            await controller.stop()
            controller = Controller(settings)
            await controller.start()
            await eventually(lambda: runtime.state.connects == 2 and runtime.connected.is_set(), "the agent reconnects")
            await eventually(lambda: controller.cache.ready.is_set(), "the new controller to serve")
            # The agent's subscription (with the versions it holds) follows the welcome, so this is a wait too.
            await eventually(lambda: controller.nodes.get(node) and len(controller.nodes.get(node).of(TYPE_URL).acked)
                             == 3, "the new controller to learn what the node holds from its subscription")
            await asyncio.sleep(0.5)  # a push, if one were wrongly made, lands well within this
            assert len(handler.calls) == applies, "unchanged state is not applied again"
            assert runtime.metrics.responses.labels(TYPE_URL)._value.get() == responses, "nothing was sent"

            await rest.delete(SERVICE_INTERFACE, "if1", namespace)
            await eventually(lambda: set(handler.ports.values()) == {"p0", "p2"}, "changes flow after the restart")
            assert handler.calls[-1] == (frozenset(), frozenset({f"{namespace}/if1"}))
        finally:
            await stop_task(task)
            await controller.stop()
            await rest.close()

    run(scenario())


def test_agent_restart_reasserts_stored_state_and_resumes(kube: ControlPlane, namespace: str,
                                                          tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        port = free_port()
        settings = controller_settings(kube.kubeconfig, namespace, port)
        controller = Controller(settings)
        await started(controller)
        node = f"dpu-s-{uuid.uuid4().hex[:6]}"
        tls = await node_files(rest, namespace, node, "dpu", tmp_path / "certs")
        first = InterfaceHandler()
        runtime = agent(node, [port], tmp_path / "state", tls, first)
        task = asyncio.create_task(runtime.run())
        try:
            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplink", node, "p0"), namespace)
            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "vf", node, "pf0vf0"), namespace)
            await eventually(lambda: len(first.ports) == 2, "two interfaces programmed")
            version = runtime.appliers[TYPE_URL].state.version

            # Agent and controller both go away; the agent comes back first.
            await stop_task(task)
            await controller.stop()
            second = InterfaceHandler()
            runtime = agent(node, [port], tmp_path / "state", tls, second)
            task = asyncio.create_task(runtime.run())
            await eventually(lambda: second.ports == first.ports, "stored state re-asserted with no controller")
            assert not runtime.connected.is_set()
            assert second.calls == [(frozenset(first.ports), frozenset())]

            # The controller returns: the agent subscribes with its stored versions and gets nothing.
            controller = Controller(settings)
            await controller.start()
            await eventually(lambda: runtime.connected.is_set() and controller.cache.ready.is_set(), "reconnection")
            await eventually(lambda: controller.nodes.get(node).of(TYPE_URL).acked_version == version,
                             "the controller to adopt the stored version")
            await asyncio.sleep(0.5)
            assert runtime.metrics.responses.labels(TYPE_URL)._value.get() == 0
            assert len(second.calls) == 1

            # A change made while the agent was away arrives as a delta on top of the stored state.
            await rest.delete(SERVICE_INTERFACE, "vf", namespace)
            await eventually(lambda: second.ports == {f"{namespace}/uplink": "p0"}, "the delete to arrive")
        finally:
            await stop_task(task)
            await controller.stop()
            await rest.close()

    run(scenario())
