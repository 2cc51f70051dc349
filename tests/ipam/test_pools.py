"""DPUServiceIPAM end to end over the real apiserver and real gRPC (mTLS), with agents running the real
IPAMBlock handler: the split in status, each node gets only its block, conditions follow the agents,
allocations survive a controller restart, a departed node's block is freed after the grace period, and
a block the agent cannot use is NACKed into a condition and an Event."""

from __future__ import annotations

import json
from pathlib import Path

from dpf.controller.cache.ipamblocks import TYPE_URL
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import DPU_SERVICE_IPAM, NODE
from dpf.lab.bed.kube import ControlPlane
from tests.controlplane.harness import dpu_cluster, eventually, host_rest, node_files, run

from .harness import (
    Nodes,
    allocations,
    condition,
    in_process_agent,
    ipam_settings,
    network_pool,
    serving,
    status,
    subnet_pool,
    suffix,
)


def test_split_reaches_each_node_and_conditions_follow_the_agents(kube: ControlPlane, namespace: str,
                                                                   tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        group = suffix()
        nodes = Nodes(rest, group)
        a, b, c = f"dpu-a-{group}", f"dpu-b-{group}", f"dpu-c-{group}"
        controller = await serving(Controller(ipam_settings(kube.kubeconfig, namespace)))
        endpoint = f"127.0.0.1:{controller.grpc_port}"
        agents = {}
        try:
            await nodes.add(a)
            await nodes.add(b)
            await nodes.add(c, member=False)
            for node in (a, b, c):
                tls = await node_files(rest, namespace, node, "dpu", tmp_path / node / "certs")
                agents[node] = in_process_agent(node, endpoint, tmp_path / node, tls).start()
            await rest.create(DPU_SERVICE_IPAM, subnet_pool(namespace, "pool1", group,
                                                            routes=[{"dst": "10.99.0.0/16"}]), namespace)

            st = await eventually(lambda: _ready(rest, namespace, "pool1"), "pool1 Ready")
            assert allocations(st) == {a: {"startIP": "10.77.0.1", "endIP": "10.77.0.8"},
                                       b: {"startIP": "10.77.0.9", "endIP": "10.77.0.16"}}
            for type_ in ("DPUIPAMObjectReconciled", "DPUIPAMObjectReady"):
                assert condition(st, type_)["status"] == "True", st
            assert st["observedGeneration"] == 1
            assert agents[a].blocks == {"pool1": ("10.77.0.1", "10.77.0.8")}
            assert agents[b].blocks == {"pool1": ("10.77.0.9", "10.77.0.16")}
            assert agents[a].handler.ipam.blocks["pool1"].routes[0].dst == "10.99.0.0/16"
            assert agents[c].blocks == {}, "a node outside nodeSelector gets no block"
            out = kube.kubectl("get", "dpuserviceipam", "pool1", "-n", namespace, "--no-headers").stdout.split()
            assert out[:3] == ["pool1", "True", "Success"]
            # Converged means quiet: more reconciles (a Node relabel enqueues every pool) write nothing.
            version = (await rest.get(DPU_SERVICE_IPAM, "pool1", namespace))["metadata"]["resourceVersion"]
            done = _reconciles(controller)
            await rest.merge_patch(NODE, c, {"metadata": {"labels": {"dpf-test/touched": "yes"}}})
            await eventually(lambda: _reconciles(controller) >= done + 1, "a pool reconcile after the relabel")
            assert (await rest.get(DPU_SERVICE_IPAM, "pool1", namespace))["metadata"]["resourceVersion"] == version

            # A second pool of the other shape lands next to the first on the same nodes.
            await rest.create(DPU_SERVICE_IPAM, network_pool(namespace, "pool2", group, gatewayIndex=1), namespace)
            st2 = await eventually(lambda: _ready(rest, namespace, "pool2"), "pool2 Ready")
            assert allocations(st2) == {a: {"prefix": "10.78.0.0/28", "gateway": "10.78.0.1"},
                                        b: {"prefix": "10.78.0.16/28", "gateway": "10.78.0.17"}}
            assert agents[a].blocks == {"pool1": ("10.77.0.1", "10.77.0.8"), "pool2": ("10.78.0.1", "10.78.0.14")}

            # Node c joins: it gets the next block, the others keep theirs.
            await nodes.set_member(c, True)
            await eventually(lambda: agents[c].blocks.get("pool1") == ("10.77.0.17", "10.77.0.24"), "c's block")
            st = await eventually(lambda: _ready(rest, namespace, "pool1"), "pool1 Ready with c")
            assert allocations(st)[a] == {"startIP": "10.77.0.1", "endIP": "10.77.0.8"}

            # Deleting a pool takes its blocks away from the nodes.
            await rest.delete(DPU_SERVICE_IPAM, "pool2", namespace)
            await eventually(lambda: all("pool2" not in agents[n].blocks for n in (a, b, c)), "pool2 removed")
        finally:
            for agent in agents.values():
                await agent.stop()
            await controller.stop()
            await nodes.cleanup()
            await rest.close()

    run(scenario())


def test_allocations_survive_a_controller_restart(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        group = suffix()
        nodes = Nodes(rest, group)
        b, c = f"dpu-b-{group}", f"dpu-c-{group}"
        settings = ipam_settings(kube.kubeconfig, namespace)
        controller = await serving(Controller(settings))
        agent = None
        try:
            await nodes.add(b)
            await nodes.add(c)
            await rest.create(DPU_SERVICE_IPAM, network_pool(namespace, "pool1", group), namespace)
            before = allocations(await eventually(lambda: _reconciled(rest, namespace, "pool1", 2), "the split"))
            assert before == {b: {"prefix": "10.78.0.0/28"}, c: {"prefix": "10.78.0.16/28"}}
            await controller.stop()

            # While no controller runs, b's agent appears for the first time and node a (sorting first) joins:
            # a fresh split would give a the first prefix and move b and c.
            tls = await node_files(rest, namespace, b, "dpu", tmp_path / "certs")
            await nodes.add(f"dpu-a-{group}")
            controller = await serving(Controller(settings))
            agent = in_process_agent(b, f"127.0.0.1:{controller.grpc_port}", tmp_path / b, tls,
                                     register_later=True).start()
            # The handler is registered on the running agent (as `serve_cni` may do): the open stream subscribes.
            await eventually(lambda: agent.runtime.connected.is_set(), "b connected")
            agent.runtime.add_handler(agent.handler)
            await eventually(lambda: agent.blocks == {"pool1": ("10.78.0.1", "10.78.0.14")}, "b's old prefix")
            after = allocations(await eventually(lambda: _reconciled(rest, namespace, "pool1", 3), "a's block"))
            assert after == {**before, f"dpu-a-{group}": {"prefix": "10.78.0.32/28"}}

            async def only_a_pending() -> dict | None:
                # b's ACK may reach the controller after the split was written: the status converges on it.
                found = condition(await status(rest, namespace, "pool1"), "DPUIPAMObjectReady")
                message = found["message"]
                ok = f"dpu-a-{group} (agent not connected)" in message and f"dpu-b-{group}" not in message
                return found if ok else None

            ready = await eventually(only_a_pending, "only a pending (b ACKed its old block)")
            assert ready["status"] == "False"
        finally:
            if agent is not None:
                await agent.stop()
            await controller.stop()
            await nodes.cleanup()
            await rest.close()

    run(scenario())


def test_a_departed_node_keeps_its_block_for_the_grace_period_then_frees_it(kube: ControlPlane, namespace: str,
                                                                          tmp_path: Path) -> None:
    grace = 2.0

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        group = suffix()
        nodes = Nodes(rest, group)
        a, b, d = f"dpu-a-{group}", f"dpu-b-{group}", f"dpu-d-{group}"
        controller = await serving(Controller(ipam_settings(kube.kubeconfig, namespace, grace=grace)))
        tls = await node_files(rest, namespace, a, "dpu", tmp_path / "certs")
        agent = in_process_agent(a, f"127.0.0.1:{controller.grpc_port}", tmp_path / a, tls).start()
        try:
            await nodes.add(a)
            await nodes.add(b)
            await rest.create(DPU_SERVICE_IPAM, subnet_pool(namespace, "pool1", group, per_node=4), namespace)
            await eventually(lambda: agent.blocks == {"pool1": ("10.77.0.1", "10.77.0.4")}, "a's block")

            await nodes.set_member(a, False)
            st = await eventually(lambda: _departed(rest, namespace, "pool1", a), "a marked departed")
            assert allocations(st)[a]["startIP"] == "10.77.0.1", "the block stays reserved for a"
            await eventually(lambda: agent.blocks == {}, "a no longer allocates from pool1")
            # A newcomer within the grace period does not get a's block.
            await nodes.add(d)
            st = await eventually(lambda: _reconciled(rest, namespace, "pool1", 3), "d's block")
            assert allocations(st)[d] == {"startIP": "10.77.0.9", "endIP": "10.77.0.12"}
            # After the grace period a's entry is gone (nobody else moved), and the block is free again.
            st = await eventually(lambda: _reconciled(rest, namespace, "pool1", 2), "a's block released",
                                  timeout=grace + 10)
            assert sorted(allocations(st)) == [b, d]
            await nodes.set_member(a, True)
            st = await eventually(lambda: _reconciled(rest, namespace, "pool1", 3), "a back")
            assert allocations(st)[a] == {"startIP": "10.77.0.1", "endIP": "10.77.0.4"}, "the first free block"
        finally:
            await agent.stop()
            await controller.stop()
            await nodes.cleanup()
            await rest.close()

    run(scenario())


def test_a_block_the_agent_cannot_use_is_nacked_into_a_condition(kube: ControlPlane, namespace: str,
                                                                 tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        group = suffix()
        nodes = Nodes(rest, group)
        a = f"dpu-a-{group}"
        controller = await serving(Controller(ipam_settings(kube.kubeconfig, namespace)))
        tls = await node_files(rest, namespace, a, "dpu", tmp_path / "certs")
        agent = in_process_agent(a, f"127.0.0.1:{controller.grpc_port}", tmp_path / a, tls).start()
        try:
            await nodes.add(a)
            await rest.create(DPU_SERVICE_IPAM, subnet_pool(namespace, "pool1", group), namespace)
            await eventually(lambda: _ready(rest, namespace, "pool1"), "pool1 Ready")
            # pool2's prefix for this node overlaps pool1's range: the agent must refuse it.
            await rest.create(DPU_SERVICE_IPAM, network_pool(namespace, "pool2", group, network="10.77.0.0/24"),
                              namespace)
            st = await eventually(lambda: _condition_reason(rest, namespace, "pool2", "DPUIPAMObjectReady", "Failure"),
                                  "pool2's NACK in its condition")
            message = condition(st, "DPUIPAMObjectReady")["message"]
            assert message.startswith(f"node {a} rejected the block: pool 'pool2': range 10.77.0.1-10.77.0.14 "
                                      "overlaps pool 'pool1' (10.77.0.1-10.77.0.8)"), message
            assert condition(st, "Ready")["status"] == "False"
            assert condition(st, "Ready")["message"] == "The following conditions are not ready: DPUIPAMObjectReady"
            assert condition(await status(rest, namespace, "pool1"), "Ready")["status"] == "True"
            assert agent.blocks == {"pool1": ("10.77.0.1", "10.77.0.8")}, "the rejected update was not applied"
            def rejections() -> list[str]:
                events = json.loads(kube.kubectl("get", "events.events.k8s.io", "-n", namespace, "-o", "json").stdout)
                return [e["note"] for e in events["items"] if e["reason"] == "AgentRejected"
                        and e["regarding"]["name"] == "pool2"]

            # The controller records the Event after the status write that the condition was read from.
            notes = await eventually(rejections, "a Warning Event AgentRejected on pool2", timeout=10)
            assert "overlaps pool 'pool1'" in notes[0], notes
            assert controller.nodes.get(a).of(TYPE_URL).nack is not None

            # Removing the conflict clears it (networks may only grow, so the fix is to drop pool1).
            await rest.delete(DPU_SERVICE_IPAM, "pool1", namespace)
            await eventually(lambda: _ready(rest, namespace, "pool2"), "pool2 Ready after the fix")
            assert agent.blocks == {"pool2": ("10.77.0.1", "10.77.0.14")}
        finally:
            await agent.stop()
            await controller.stop()
            await nodes.cleanup()
            await rest.close()

    run(scenario())


def _reconciles(controller: Controller) -> float:
    return controller.metrics.registry.get_sample_value("dpf_controller_reconcile_duration_seconds_count",
                                                        {"reconciler": "dpuserviceipam"}) or 0.0


# ---- predicates ----------------------------------------------------------------------------------------------
async def _ready(rest, namespace: str, name: str) -> dict | None:
    st = await status(rest, namespace, name)
    return st if condition(st, "Ready").get("status") == "True" else None


async def _reconciled(rest, namespace: str, name: str, count: int) -> dict | None:
    st = await status(rest, namespace, name)
    return st if len(allocations(st)) == count else None


async def _departed(rest, namespace: str, name: str, node: str) -> dict | None:
    st = await status(rest, namespace, name)
    return st if "departedAt" in allocations(st).get(node, {}) else None


async def _condition_reason(rest, namespace: str, name: str, type_: str, reason: str) -> dict | None:
    st = await status(rest, namespace, name)
    return st if condition(st, type_).get("reason") == reason else None


