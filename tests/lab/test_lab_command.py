"""`./dev lab`'s main job, as a user runs it: it comes up, kubectl works, it takes a fault (a killed DPU agent
comes back and serves), Ctrl-C stops everything. One lab serves the module's tests (start-up is the cost)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpf.lab import chains
from dpf.lab.bed.netns import bed_namespaces
from dpf.lab.bed.process import descendants, wait_until
from dpf.lab.bed.tools import tool
from dpf.lab.sfc_demo import NAMESPACE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
DPF = [sys.executable, "-m", "dpf.cli"]


class Output:
    """Collects a process's output in a thread so the test can wait on lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(10)
        proc.stdout.close()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class RunningLab:
    proc: subprocess.Popen[str]
    out: Output
    workdir: Path
    kubeconfig: str

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([tool("kubectl"), *args], input=input, capture_output=True, text=True, check=True,
                              env={**os.environ, "KUBECONFIG": self.kubeconfig}, timeout=90).stdout

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc.poll() is None, self.out.text
            return next((m for line in list(self.out.lines) if (m := re.search(pattern, line))), None)
        return wait_until(found, timeout, f"a lab line matching {pattern!r}")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    """One lab for the module's tests, in file order: up, a fault, then Ctrl-C (the last test)."""
    workdir = tmp_path_factory.mktemp("lab") / "lab"
    proc = subprocess.Popen([*DPF, "lab", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        wait_until(lambda: "Press Ctrl-C" in out.text or proc.poll() is not None, 240, "the lab to come up")
        assert proc.poll() is None, out.text
        kubeconfig = next(line.split("=", 1)[1] for line in out.lines if "export KUBECONFIG=" in line)
        yield RunningLab(proc, out, workdir, kubeconfig)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        out.close(proc)


def test_lab_starts_serves_kubectl_and_shows_the_chain_working(lab: RunningLab) -> None:
    proc, out, workdir, kubeconfig = lab.proc, lab.out, lab.workdir, lab.kubeconfig
    crds = subprocess.run([tool("kubectl"), "get", "crd", "-o", "name"], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": kubeconfig}, check=True).stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/bfbs.provisioning.dpu.nvidia.com" in crds
    daemons = set(descendants(proc.pid).values())
    assert {"etcd", "kube-apiserver", "ovsdb-server", "ovs-vswitchd"} <= daemons

    # The service chain: Ready only once programmed, packets through it, none once it is deleted.
    text = out.text
    assert "dpuservicechains/hbn-to-fabric Ready after" in text
    for dpu, net in (("worker1-0000-08-00", "10.100.1"), ("worker2-0000-08-00", "10.100.2")):
        for port in "01":
            ping = f"DPU {dpu}: ping {net}{port}.1 (fabric p{port}) -> {net}{port}.2 (HBN p{port}_if)"
            assert f"traffic passes: {ping}: 3/3 replies" in text
            assert f"traffic stops: {ping}: no reply" in text
        assert f"traffic passes: DPU {dpu}: iperf3 TCP fabric p0 -> HBN p0_if:" in text
    assert text.index("traffic stops:") > text.index("deleting DPUServiceChain hbn-to-fabric")
    servicechains = subprocess.run([tool("kubectl"), "get", "servicechains", "-n", "dpf-operator-system", "-o", "name"],
                            capture_output=True, text=True, env={**os.environ, "KUBECONFIG": kubeconfig},
                            check=True).stdout.split()
    assert sorted(servicechains) == ["servicechain.svc.dpu.nvidia.com/hbn-to-fabric-worker1-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/hbn-to-fabric-worker2-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/lab-svc-to-fabric-worker1-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/lab-svc-to-fabric-worker2-0000-08-00"]

    # Service pods: attached by Multus with an address from the DPUServiceIPAM pool, chained to p2.
    assert "dpuserviceipams/lab-pool Ready after" in text
    addresses = []
    for i, dpu in enumerate(("worker1-0000-08-00", "worker2-0000-08-00"), start=1):
        attached = re.search(rf"DPU {dpu}: service pod dpf-operator-system/lab-svc-{i} attached by Multus "
                             r"\(NAD mybrsfc-pool-d\d, .*\): interface net1 ip (\S+) from DPUServiceIPAM lab-pool",
                             text)
        assert attached, text
        address = ipaddress.ip_interface(attached.group(1))
        assert address.network == ipaddress.ip_network("10.200.0.0/24")
        assert address.ip != ipaddress.ip_address("10.200.0.1"), "the pool's gateway went to a pod"
        addresses.append(address.ip)
        assert (f"traffic passes: DPU {dpu}: ping 10.200.0.254 (fabric p2) -> {address.ip} (service pod net1): "
                "3/3 replies") in text
    assert len(set(addresses)) == 2, "each DPU leases from its own block of the pool"
    status = json.loads(subprocess.run(
        [tool("kubectl"), "get", "pod", "lab-svc-1", "-n", "dpf-operator-system", "-o",
         "jsonpath={.metadata.annotations.k8s\\.v1\\.cni\\.cncf\\.io/network-status}"],
        capture_output=True, text=True, env={**os.environ, "KUBECONFIG": kubeconfig}, check=True).stdout)
    assert any(n.get("interface") == "net1" and n.get("ips") == [str(addresses[0])] for n in status), status

    # Upstream's BFB object: downloaded by the controller from the lab's stand-in server into its BFB dir.
    cached = (r"BFB bf-bundle: phases (Initializing -> )?(Downloading -> )?Ready in [\d.]+s; 64 MiB cached "
              r"as \S+/bfb/dpf-operator-system-bf-bundle\.bfb \(sha256 matches the served file\)")
    assert re.search(cached, text), text
    assert (workdir / "bfb" / "dpf-operator-system-bf-bundle.bfb").stat().st_size == 64 * 2**20

    second = subprocess.run([*DPF, "lab", "--workdir", str(workdir), "--for", "0"], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 1
    assert "another lab is running" in second.stdout


def test_a_killed_dpu_agent_is_restarted_and_the_chain_still_works(lab: RunningLab) -> None:
    dpu = "worker1-0000-08-00"
    listed = lab.wait_for_line(rf"^  dpu agent {dpu}\s+(\d+)\s+(\S+)$", 1)
    old_pid = int(listed.group(1))
    assert old_pid in descendants(lab.proc.pid), "the lab lists the agent's pid"
    netns, _, hbn = next(line.split()[3:6] for line in lab.out.lines if line.startswith("  ip netns exec dpf-lab")
                         and " ping 10.100.10." in line)  # worker1's fabric p0 -> HBN p0_if, as the lab prints it

    def ping() -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("ip"), "netns", "exec", netns, "ping", "-n", "-c", "3", "-W", "0.5", "-i", "0.2",
                               hbn], capture_output=True, text=True, timeout=20)

    os.kill(old_pid, signal.SIGKILL)
    lab.wait_for_line(rf"^\[lab\] dpu agent {dpu} exited \(signal 9\); restarting in 0\.5s \(restart 1\)$", 5)
    new_pid = int(lab.wait_for_line(rf"^\[lab\] dpu agent {dpu} running again as pid (\d+); log: "
                                    rf"{re.escape(listed.group(2))}$", 5).group(1))
    assert new_pid != old_pid
    assert new_pid in descendants(lab.proc.pid)

    # The new agent serves the node: the chain's removal and its return both need it to program br-sfc. The
    # delete can finish before the new agent has connected (it learns the node's state then), hence a wait.
    lab.kubectl("delete", "dpuservicechain", "hbn-to-fabric", "-n", NAMESPACE, "--wait=true")
    wait_until(lambda: ping().returncode != 0, 30, "the restarted agent to remove the deleted chain's flows")
    chain = [o for o in chains.hbn_only(NAMESPACE, "lab") if o["kind"] == "DPUServiceChain"]
    lab.kubectl("apply", "--server-side", "-f", "-", input=chains.to_yaml(chain))
    lab.kubectl("wait", "--for=condition=Ready", "dpuservicechain/hbn-to-fabric", "-n", NAMESPACE, "--timeout=60s")
    replies = ping()
    assert replies.returncode == 0, replies.stdout
    assert lab.proc.poll() is None
    assert new_pid in descendants(lab.proc.pid)


def test_lab_stops_cleanly_on_ctrl_c(lab: RunningLab) -> None:
    lab.proc.send_signal(signal.SIGINT)
    status = lab.proc.wait(60)
    lab.out.close(lab.proc)
    assert status == 0, lab.out.text
    assert "stopped cleanly" in lab.out.text
    stopping = lab.out.text.index("[lab] stopping:")
    assert "restarting in" not in lab.out.text[stopping:], "a process stopped by the lab was restarted"
    leftovers = subprocess.run(["pgrep", "-f", str(lab.workdir)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "lab daemons outlived the lab"
    assert bed_namespaces("lab", lab.proc.pid) == [], "the lab's network namespaces outlived it"


def test_lab_help_explains_itself() -> None:
    out = subprocess.run([*DPF, "lab", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Ctrl-C" in out
    assert "--workdir" in out
    assert "--for SECONDS" in out
    assert "Restart=on-failure" in out
    assert "kill -9 $(pgrep -f 'agent dpu --node worker1')" in out, "how to try a fault"
