"""Helpers for the IPAM end-to-end tests: DPU Nodes and DPUServiceIPAMs on the real apiserver,
the controller in-process, agents in-process (the IPAMBlock handler over a real lease file) or as a real
process with the CNI server inside the OVS netns (`dpu_agent.py`).

The "DPU cluster" is the test apiserver itself (a DPUCluster whose kubeconfig points back at it); Nodes
are cluster-scoped, so every test labels its own Nodes with a unique value and selects only those.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from dpf.agent.ipam.handler import IpamBlockHandler
from dpf.agent.ipam.service import open_service
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings, TLSFiles
from dpf.controller.kube.rest import Rest
from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import DPU_SERVICE_IPAM, NODE
from dpf.controller.settings import ControllerSettings, IPAMSettings, ServerSettings
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child
from dpf.lab.bed.tools import tool
from tests.controlplane.harness import controller_settings, eventually

LABEL = "dpf-test/ipam"
HERE = Path(__file__).resolve().parent


def suffix() -> str:
    return uuid.uuid4().hex[:6]


def selector(value: str) -> dict[str, Any]:
    return {"nodeSelectorTerms": [{"matchExpressions": [{"key": LABEL, "operator": "In", "values": [value]}]}]}


def subnet_pool(namespace: str, name: str, group: str, subnet: str = "10.77.0.0/24", gateway: str = "10.77.0.1",
                per_node: int = 8, **extra: Any) -> dict[str, Any]:
    """The ipv4Subnet shape (upstream's IPPool example)."""
    return {"apiVersion": DPU_SERVICE_IPAM.api_version, "kind": "DPUServiceIPAM",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ipv4Subnet": {"subnet": subnet, "gateway": gateway, "perNodeIPCount": per_node, **extra},
                     "nodeSelector": selector(group)}}


def network_pool(namespace: str, name: str, group: str, network: str = "10.78.0.0/24", prefix: int = 28,
                 **extra: Any) -> dict[str, Any]:
    """The ipv4Network shape (upstream's hbn-ipam.yaml: a /24 cut into per-node prefixes)."""
    return {"apiVersion": DPU_SERVICE_IPAM.api_version, "kind": "DPUServiceIPAM",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ipv4Network": {"network": network, "prefixSize": prefix, **extra},
                     "nodeSelector": selector(group)}}


class Nodes:
    """DPU-cluster Nodes this test created (deleted at the end)."""

    def __init__(self, rest: Rest, group: str) -> None:
        self.rest, self.group, self.names = rest, group, []

    async def add(self, name: str, member: bool = True) -> str:
        labels = {LABEL: self.group if member else "elsewhere"}
        await self.rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        self.names.append(name)
        return name

    async def set_member(self, name: str, member: bool) -> None:
        labels = {LABEL: self.group if member else "elsewhere"}
        await self.rest.merge_patch(NODE, name, {"metadata": {"labels": labels}})

    async def cleanup(self) -> None:
        for name in self.names:
            await self.rest.delete(NODE, name)


async def status(rest: Rest, namespace: str, name: str) -> dict[str, Any]:
    obj = await rest.get(DPU_SERVICE_IPAM, name, namespace)
    return (obj or {}).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def allocations(st: dict[str, Any]) -> dict[str, dict[str, str]]:
    """nodeName -> entry without the node name."""
    return {a["nodeName"]: {k: v for k, v in a.items() if k != "nodeName"} for a in st.get("allocations") or ()}


def ipam_settings(kubeconfig: Path, namespace: str, listen: str = "", grace: float = 600.0) -> ControllerSettings:
    settings = controller_settings(kubeconfig, namespace)
    if listen:
        settings = dataclasses.replace(settings, server=ServerSettings(listen=listen, hello_timeout=5.0))
    return dataclasses.replace(settings, ipam=IPAMSettings(release_grace=grace))


@dataclasses.dataclass
class InProcessAgent:
    """A DPU agent without the CNI server: the runtime and the real IPAMBlock handler over a lease file."""

    runtime: AgentRuntime
    handler: IpamBlockHandler
    task: asyncio.Task[None] | None = None

    @property
    def blocks(self) -> dict[str, tuple[str, str]]:
        """pool -> (first, last) this agent allocates from."""
        return {p: (str(b.first), str(b.last)) for p, b in self.handler.ipam.blocks.items()}

    def start(self) -> InProcessAgent:
        self.task = asyncio.create_task(self.runtime.run(), name=f"agent/{self.runtime.settings.node}")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


def in_process_agent(node: str, endpoint: str, state: Path, tls: TLSFiles | None,
                     register_later: bool = False) -> InProcessAgent:
    handler = IpamBlockHandler(open_service(state / "leases.json"))
    settings = AgentSettings(node=node, role="dpu", endpoints=(endpoint,), state_dir=state / "runtime", tls=tls,
                             insecure=tls is None, backoff_base=0.05, backoff_max=0.5, connect_timeout=3.0,
                             resync_period=0)
    return InProcessAgent(AgentRuntime(settings, [] if register_later else [handler]), handler)


@dataclasses.dataclass
class ProcessAgent:
    """`dpu_agent.py` inside the OVS netns: the agent runtime plus the real CNI server."""

    node: str
    ovs: OvsSwitch
    workdir: Path
    controller: str
    tls: TLSFiles
    child: Child | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "agent.sock"

    def start(self) -> ProcessAgent:
        argv = [tool("ip"), "netns", "exec", self.ovs.netns, sys.executable, str(HERE / "dpu_agent.py"),
                "--node", self.node, "--controller", self.controller, "--state-dir", str(self.workdir / "state"),
                "--cni-socket", str(self.socket), "--ovsdb", f"unix:{self.ovs.db_sock}",
                "--ca", str(self.tls.ca), "--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        self.child = Child(f"dpu-agent-{self.node}", argv, self.workdir / "agent.log")
        return self

    def answers(self) -> bool:
        assert self.child is not None
        self.child.check_alive()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def leases(self) -> dict[str, str]:
        """ip -> owner key, from the agent's lease file."""
        data = json.loads((self.workdir / "state" / "cni" / "leases.json").read_text())["data"]
        return {ip: f"{rec['owner']['container_id']}/{rec['owner']['ifname']}"
                for pool in data.get("pools", {}).values() for ip, rec in pool["leases"].items()}


async def serving(controller: Controller) -> Controller:
    await controller.start()
    await eventually(lambda: controller.is_leader and controller.cache.ready.is_set(), "the controller to serve")
    return controller
