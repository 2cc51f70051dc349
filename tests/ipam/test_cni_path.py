"""DPUServiceIPAM → the node's agent → a pod address, through the real CNI path: the controller splits the
pool, the DPU agent process (runtime + `serve_cni`, inside the OVS netns) receives only its node's block,
and an ADD run through the shim plugs a pod with an address from that block. The pools survive an agent
restart while the controller is down."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import DPU_SERVICE_IPAM
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed
from dpf.lab.bed.ovs import OvsSwitch
from tests.cni.cnirun import call, netconf, owned_ports
from tests.cni.conftest import BRIDGE, PLUGIN
from tests.controlplane.harness import dpu_cluster, eventually, host_rest, node_files, run

from .harness import (
    Nodes,
    ProcessAgent,
    allocations,
    in_process_agent,
    ipam_settings,
    network_pool,
    serving,
    status,
    subnet_pool,
    suffix,
)

SHAPES = {
    # upstream IPPool example: one subnet, perNodeIPCount addresses per node, shared gateway (.1 is in a's block)
    "ipv4Subnet": (lambda ns, group: subnet_pool(ns, "pool1", group, routes=[{"dst": "10.99.0.0/16"}]),
                   {"startIP": "10.77.0.1", "endIP": "10.77.0.8"}, ["10.77.0.2/24", "10.77.0.3/24"], "10.77.0.1"),
    # upstream hbn-ipam.yaml: a /24 cut into per-node prefixes, gateway at an index of each prefix
    "ipv4Network": (lambda ns, group: network_pool(ns, "pool1", group, gatewayIndex=1),
                    {"prefix": "10.78.0.0/28", "gateway": "10.78.0.1"}, ["10.78.0.2/28", "10.78.0.3/28"], "10.78.0.1"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_pool_block_reaches_the_node_and_an_add_gets_an_address_from_it(
        shape: str, kube: ControlPlane, namespace: str, ovs: OvsSwitch, netns: NetnsBed, tmp_path: Path,
        script_bin_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for netns and OVS")
    make_pool, a_entry, a_addresses, gateway = SHAPES[shape]
    ovs.add_bridge(BRIDGE)
    shim = script_bin_dir / PLUGIN

    # Pod namespaces are made up front: pyroute2 runs its own event loop and forks, neither of which may
    # happen inside the scenario's loop (with gRPC threads running).
    pods = {container: netns.namespace(container) for container in ("c1", "c2")}

    async def add(agent: ProcessAgent, container: str) -> dict:
        result = await asyncio.to_thread(call, shim, "ADD", netconf(agent.socket), container, pods[container])
        assert result.rc == 0, (result.doc, agent.child.log_tail() if agent.child else "")
        return result.doc

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        group = suffix()
        nodes = Nodes(rest, group)
        a, b = f"dpu-a-{group}", f"dpu-b-{group}"
        # A unix socket: the agent runs inside the OVS netns, where the test's loopback is not reachable.
        endpoint = f"unix:{tmp_path / 'nodestate.sock'}"
        settings = ipam_settings(kube.kubeconfig, namespace, listen=endpoint)
        controller = await serving(Controller(settings))
        agent_a = ProcessAgent(a, ovs, tmp_path / a, endpoint,
                               await node_files(rest, namespace, a, "dpu", tmp_path / a / "certs"))
        tls_b = dataclasses.replace(await node_files(rest, namespace, b, "dpu", tmp_path / b / "certs"),
                                    server_name="localhost")
        agent_b = in_process_agent(b, endpoint, tmp_path / b, tls_b).start()
        running = True
        try:
            await nodes.add(a)
            await nodes.add(b)
            agent_a.start()
            await eventually(agent_a.answers, "node a's CNI socket")
            await rest.create(DPU_SERVICE_IPAM, make_pool(namespace, group), namespace)
            st = await eventually(lambda: _ready(rest, namespace), "pool1 Ready: both agents ACKed")
            assert allocations(st)[a] == a_entry
            b_block = agent_b.blocks["pool1"]
            assert agent_b.blocks == {"pool1": b_block}, "node b got its own block only"

            first = await add(agent_a, "c1")
            assert [ip["address"] for ip in first["ips"]] == [a_addresses[0]]
            assert first["ips"][0]["gateway"] == gateway
            ip = ipaddress.ip_address(a_addresses[0].split("/")[0])
            assert not (ipaddress.ip_address(b_block[0]) <= ip <= ipaddress.ip_address(b_block[1]))
            assert any(p.get("dpf-cni-ips") == a_addresses[0] for p in owned_ports(ovs).values())

            # The agent restarts while no controller runs: its pool is back before its socket accepts ADDs.
            await controller.stop()
            running = False
            agent_a.stop()
            agent_a.start()
            await eventually(agent_a.answers, "node a's CNI socket after the restart")
            second = await add(agent_a, "c2")
            assert [ip["address"] for ip in second["ips"]] == [a_addresses[1]]
            ips = [address.split("/")[0] for address in a_addresses]
            assert agent_a.leases() == {ips[0]: "c1/net1", ips[1]: "c2/net1"}
        finally:
            agent_a.stop()
            await agent_b.stop()
            if running:
                await controller.stop()
            await nodes.cleanup()
            await rest.close()

    run(scenario())


async def _ready(rest, namespace: str) -> dict | None:
    st = await status(rest, namespace, "pool1")
    ready = next((c for c in st.get("conditions") or () if c["type"] == "Ready"), {})
    return st if ready.get("status") == "True" else None
