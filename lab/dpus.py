"""DPUs as the service-chaining scenarios use them: a network namespace holding an Open vSwitch (`bed/ovs.py`,
userspace datapath) and a DPU agent process (`dpf agent dpu`, with the CNI server), with uplinks as veths into
"fabric" namespaces and service pods plugged through the real SFC CNI plugin.

The lab's DPUs are provisioned (`provision.py`): their OS started the OVS and the agent, and `EmulatedDpu` only
wires uplinks and plugs pods on them. The end-to-end tests of service chaining make theirs by hand here
(`start_switch`, `start_agent`), without provisioning.

On a BlueField the agent shares the DPU's network namespace with OVS; here it runs inside the DPU's
namespace (`ip netns exec`) for the same reason: the CNI server creates the pods' veths next to OVS. It
reaches the controller over a unix socket, since the host's loopback is not visible in there.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dpf.lab.bed.netns import NetnsBed, Pod, ns_exec, ns_ipr
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool

CNI_PLUGIN = "dpf-sfc-cni"


@dataclass(frozen=True)
class AgentTLS:
    """The files `dpf controller issue-node-cert` writes for one node."""

    directory: Path

    def flags(self) -> list[str]:
        return ["--ca", str(self.directory / "ca.crt"), "--cert", str(self.directory / "tls.crt"),
                "--key", str(self.directory / "tls.key"), "--server-name", "localhost"]


def cni_bin_dir(directory: Path) -> Path:
    """A CNI bin dir whose `dpf-sfc-cni` runs the shim with this Python (the frozen build is the same code)."""
    directory.mkdir(parents=True, exist_ok=True)
    plugin = directory / CNI_PLUGIN
    script = f"#!{sys.executable}\nimport sys\nfrom dpf.cni.shim import main\nsys.exit(main())\n"
    if not plugin.exists() or plugin.read_text() != script:  # never rewritten under a kubelet that may run it
        plugin.write_text(script)
        plugin.chmod(0o755)
    return directory


@dataclass
class EmulatedDpu:
    name: str
    """The DPU-cluster Node name; also the agent's identity (certificate CN)."""
    bed: NetnsBed
    workdir: Path
    short: str
    """Short tag for namespace names (IFNAMSIZ and netns name length)."""
    ovs: OvsSwitch | None = None
    agent: Child | None = None
    pods: dict[str, Pod] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        assert self.ovs is not None
        return self.ovs.netns

    @property
    def cni_socket(self) -> Path:
        return self.workdir / "run" / "cni.sock"

    def start_switch(self) -> OvsSwitch:
        self.ovs = OvsSwitch(netns=self.bed.namespace(self.short), rundir=self.workdir / "ovs").start()
        return self.ovs

    def uplink(self, port: str, cidr: str, short: str) -> Pod:
        """A fabric namespace whose eth0 is wired to the DPU's netdev `port` (what `physical` interfaces name)."""
        name = self.bed.namespace(short)
        self.bed.veth(port, self.netns, "eth0", name)
        with ns_ipr(name) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            iface = ipaddress.ip_interface(cidr)
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        # TCP through the userspace datapath needs TX checksum offload off on the sending side.
        ns_exec(name, tool("ethtool"), "-K", "eth0", "tx", "off")
        pod = Pod(netns=name, ifname="eth0", peer=port, peer_ns=self.netns, cidr=cidr, mac=mac)
        self.pods[short] = pod
        return pod

    def start_agent(self, controller: str, tls: AgentTLS | None, log_level: str = "info") -> Child:
        assert self.ovs is not None
        argv = [tool("ip"), "netns", "exec", self.netns, sys.executable, "-m", "dpf.cli", "agent", "dpu",
                "--node", self.name, "--controller", controller, "--state-dir", str(self.workdir / "state"),
                "--ovs-rundir", str(self.ovs.rundir), "--port-type", "system",
                "--cni-socket", str(self.cni_socket), "--log-level", log_level,
                *(tls.flags() if tls else ["--insecure"])]
        self.agent = Child(f"dpu-agent-{self.name}", argv, self.workdir / "agent.log")
        wait_until(self.cni_socket.exists, 30, f"the DPU agent of {self.name} to serve CNI",
                   while_alive=[self.agent])
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def plug_pod(self, bin_dir: Path, namespace: str, pod: str, ifname: str, cidr: str, short: str) -> Pod:
        """Run CNI ADD for pod `namespace/pod` as kubelet (through Multus) would: a new pod namespace gets
        `ifname` with `cidr`, plugged into br-sfc by the agent, tagged `dpf-id=<namespace>/<pod>/<ifname>`."""
        netns = self.bed.namespace(short)
        conf = {"cniVersion": "1.0.0", "name": "mybrsfc", "type": CNI_PLUGIN, "bridge": "br-sfc",
                "agentSocket": str(self.cni_socket), "ipam": {"type": "static", "addresses": [{"address": cidr}]}}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
               "CNI_CONTAINERID": f"{short}-{os.getpid()}", "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": ifname,
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}",
               "CNI_PATH": f"{bin_dir}:/usr/lib/cni"}
        result = subprocess.run([str(bin_dir / CNI_PLUGIN)], input=json.dumps(conf), env=env, capture_output=True,
                                text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"CNI ADD of {namespace}/{pod} on {self.name} failed: {result.stdout} {result.stderr}")
        with ns_ipr(netns) as ipr:
            mac = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_ADDRESS")
        plugged = Pod(netns=netns, ifname=ifname, peer="", peer_ns=self.netns, cidr=cidr, mac=mac)
        self.pods[short] = plugged
        return plugged

    def flows(self, bridge: str = "br-sfc") -> list[str]:
        assert self.ovs is not None
        return self.ovs.flows(bridge) if self.has_bridge(bridge) else []

    def has_bridge(self, bridge: str = "br-sfc") -> bool:
        assert self.ovs is not None
        return self.ovs.vsctl("br-exists", bridge, check=False).returncode == 0

    def ports(self, bridge: str = "br-sfc") -> list[str]:
        assert self.ovs is not None
        return self.ovs.vsctl("list-ports", bridge).stdout.split() if self.has_bridge(bridge) else []

    def stop(self) -> None:
        self.stop_agent()
        if self.ovs is not None:
            self.ovs.stop()
