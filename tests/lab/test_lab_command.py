"""`./dev lab`'s main job, as a user runs it: it provisions its DPUs through DPF (a line per phase change per DPU,
with flash progress, until all are Ready), runs the chains and service pods on them, updates their BFB rolling,
kubectl works, it takes a fault (a killed DPU agent comes back and serves), Ctrl-C stops everything. One lab serves
the module's tests (start-up is the cost)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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

# Provisioning, the demo and the rolling update take minutes on a loaded machine: above the suite's 300 s default.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"), pytest.mark.timeout(1200)]
DPF = [sys.executable, "-m", "dpf.cli"]
DPUS = ("worker1-0000-08-00", "worker2-0000-08-00")


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
    dpu_kubeconfig: str

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: str | None = None) -> str:
        """kubectl against the host cluster (or the cluster of `kubeconfig`)."""
        return subprocess.run([tool("kubectl"), *args], input=input, capture_output=True, text=True, check=True,
                              env={**os.environ, "KUBECONFIG": kubeconfig or self.kubeconfig}, timeout=90).stdout

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc.poll() is None, self.out.text
            return next((m for line in list(self.out.lines) if (m := re.search(pattern, line))), None)
        return wait_until(found, timeout, f"a lab line matching {pattern!r}")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def lab() -> Iterator[RunningLab]:
    """One lab for the module's tests, in file order: up, a fault, then Ctrl-C (the last test)."""
    # Short, as the lab's default: the DPU agents' CNI sockets live under it (unix socket paths: about 100 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="dpf-lab-", dir="/tmp"))
    proc = subprocess.Popen([*DPF, "lab", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        wait_until(lambda: "Press Ctrl-C" in out.text or proc.poll() is not None, 900, "the lab to come up")
        assert proc.poll() is None, out.text
        kubeconfig = next(line.split("=", 1)[1] for line in out.lines if "export KUBECONFIG=" in line)
        dpu_kubeconfig = next(line.split("=", 1)[1].split()[0] for line in out.lines
                              if line.startswith("  KUBECONFIG=") and "get nodes" in line)
        yield RunningLab(proc, out, workdir, kubeconfig, dpu_kubeconfig)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        out.close(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _phases(text: str, dpu: str) -> list[str]:
    """The phases the lab printed for `dpu`, in order, one entry per change."""
    found: list[str] = []
    for m in re.finditer(rf"^\[lab\] DPU {dpu}: +[\d.]+s  ([A-Za-z ]+?)(?:  \((.*)\))?$", text, re.MULTILINE):
        if not found or found[-1] != m[1]:
            found.append(m[1])
    return found


def test_lab_provisions_its_dpus_and_prints_every_phase(lab: RunningLab) -> None:
    text = lab.out.text
    for dpu in DPUS:
        phases = _phases(text, dpu)
        first = phases[:phases.index("Ready") + 1]
        for expected in ("OS Installing", "Rebooting", "Host Network Configuration", "DPU Cluster Config"):
            assert expected in first, f"{dpu}: {expected} not printed: {first}"
        assert first.index("OS Installing") < first.index("Rebooting") < first.index("Ready")
        flashing = re.findall(rf"^\[lab\] DPU {dpu}: +[\d.]+s  OS Installing  \(OSInstalled: flashing (\d+) MiB of "
                              r"(\d+) MiB at (\d+) MiB/s", text, re.MULTILINE)
        assert flashing, f"{dpu}: no flash progress line"
        assert all(int(total) >= 256 and int(sent) <= int(total) for sent, total, _ in flashing), flashing
        assert re.search(rf"^\[lab\] DPU {dpu}: its OS started the DPU agent \(SFC programmer \+ CNI server\), "
                         r"pid \d+", text, re.MULTILINE)
    assert re.search(r"^\[lab\] BFB bf-bundle: +[\d.]+s  Ready  \(downloaded by the controller: 256\.\d MiB in "
                     r"\S+/bfb/", text, re.MULTILINE), "the BFB's download shown"
    took = re.search(r"^\[lab\] all 2 DPUs Ready ([\d.]+)s after the DPUSet was applied", text, re.MULTILINE)
    assert took, text
    assert f"Time to Ready: {took[1]}s for 2 DPUs" in text
    assert text.index("all 2 DPUs Ready") < text.index("applying the hbn_only DPUServiceInterfaces")

    # What DPF left: the DPUs Ready on the host cluster, their kubelets' Nodes Ready in the DPU cluster (a control
    # plane of its own) with the DPUSet's labels, the hosts' node-effect taint gone.
    dpus = json.loads(lab.kubectl("get", "dpus", "-n", NAMESPACE, "-o", "json"))["items"]
    assert sorted(d["metadata"]["name"] for d in dpus) == sorted(DPUS)
    assert all(d["status"]["phase"] == "Ready" for d in dpus)
    nodes = {n["metadata"]["name"]: n for n in json.loads(lab.kubectl("get", "nodes", "-o", "json",
                                                                      kubeconfig=lab.dpu_kubeconfig))["items"]}
    assert sorted(nodes) == sorted(DPUS)
    for dpu, node in nodes.items():
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        labels = node["metadata"]["labels"]
        assert labels["provisioning.dpu.nvidia.com/host"] == dpu.split("-")[0]
        assert labels[chains.GROUP_LABEL] == "lab"
        assert labels[chains.HBN_LABEL] == "true"
    for host in ("worker1", "worker2"):
        taints = json.loads(lab.kubectl("get", "node", host, "-o", "json"))["spec"].get("taints") or []
        assert not [t for t in taints if t["key"] == "dpu"], f"{host} keeps the provisioning taint"
    running = list(descendants(lab.proc.pid).values())
    assert {"etcd", "kube-apiserver", "kube-scheduler", "ovsdb-server", "ovs-vswitchd", "kubelet",
            "containerd"} <= set(running)
    assert running.count("kubelet") == 2, "one kubelet per DPU, the lab's CPU budget"
    assert running.count("ovs-vswitchd") == 2, "one Open vSwitch per DPU (the DPU OS's), the lab's CPU budget"


def test_lab_updates_the_bfb_rolling_one_dpu_at_a_time(lab: RunningLab) -> None:
    text = lab.out.text
    assert "strategy RollingUpdate maxUnavailable 10% of 2 DPUs = 1 at a time" in text
    update = text[text.index("[lab] rolling update: BFB bf-bundle-2.10.0"):]
    shown = re.findall(r"^\[lab\] rolling update: (\d+) of 2 DPUs unavailable \((.*)\); maxUnavailable 1$", update,
                       re.MULTILINE)
    assert {names for _, names in shown} == set(DPUS), shown
    assert all(count == "1" for count, _ in shown), shown
    # From the phase lines: the second DPU leaves Ready only once the first is back.
    events = [(m[1], m[2]) for m in re.finditer(r"^\[lab\] DPU (\S+): +[\d.]+s  ([A-Za-z ]+?)(?:  \(.*\))?$", update,
                                                re.MULTILINE)]
    down: set[str] = set()
    for dpu, phase in events:
        if phase == "Ready":
            down.discard(dpu)
        else:
            down.add(dpu)
        assert len(down) <= 1, f"two DPUs unavailable at once: {events}"
    for dpu in DPUS:
        assert "OS Installing" in [phase for name, phase in events if name == dpu], f"{dpu} was not re-flashed"
    assert re.search(r"rolling update: every DPU Ready on bf-bundle-2\.10\.0-147 after [\d.]+s; at most 1 of 2 "
                     r"unavailable at a time", update)
    nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json", kubeconfig=lab.dpu_kubeconfig))["items"]
    assert all(n["metadata"]["labels"]["provisioning.dpu.nvidia.com/DOCA-BFB-version"].startswith(
        "bf-bundle-2.10.0-147") for n in nodes)
    assert "chains carry traffic again" in update
    for dpu in DPUS:
        ping = f"DPU {dpu}: ping 10.100.0.1 (fabric p0) -> 10.100.0.2 (HBN p0_if)"
        assert f"traffic passes: {ping}: 3/3 replies" in update


def test_lab_starts_serves_kubectl_and_shows_the_chain_working(lab: RunningLab) -> None:
    out, workdir, kubeconfig = lab.out, lab.workdir, lab.kubeconfig
    crds = subprocess.run([tool("kubectl"), "get", "crd", "-o", "name"], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": kubeconfig}, check=True).stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/bfbs.provisioning.dpu.nvidia.com" in crds

    # HBN as upstream's hbn_only deploys it: DPUService doca-hbn, a Helm release whose DaemonSet runs a pod on every
    # DPU; Multus attached its p0_if/p1_if (the hbn_only service interfaces it lists) through our plugin onto br-sfc.
    text = out.text
    assert text.index("dpuservices/doca-hbn Ready after") < text.index("applying DPUServiceChain hbn-to-fabric")
    hbn = _dpuservice_pods(lab, "doca-hbn")
    for pod in hbn:
        dpu, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
        assert json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]) == [
            {"name": "mybrsfc", "interface": "p0_if"}, {"name": "mybrsfc", "interface": "p1_if"}]
        status = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
        macs = {n.get("interface"): n.get("mac") for n in status}
        fabric = _fabric_p0(lab, dpu)
        for port in "01":
            assert _bridge_of(lab, dpu, f"{NAMESPACE}/{name}/p{port}_if") == "br-sfc"
            # The chain's traffic reaches this pod: the fabric side learnt the HBN address at its p{port}_if's MAC.
            assert _mac_seen_from(f"{fabric[:-1]}{port}", f"10.100.{port}.2") == macs[f"p{port}_if"], status
        assert re.search(rf"DPU {dpu}: pod {NAMESPACE}/\S+ of DPUService doca-hbn Running; its kubelet's CNI "
                         r"\(Multus\) added p0_if and p1_if \(NAD mybrsfc, dpf-sfc-cni: ports on br-sfc\); its "
                         r"container set p0_if 10\.100\.0\.2/24 and p1_if 10\.100\.1\.2/24", text), text
        # The rolling update re-provisioned the DPU; the lab names the pod that runs now.
        assert re.findall(rf"DPU {dpu}: pod {NAMESPACE}/(\S+) of DPUService doca-hbn Running", text)[-1] == name

    # The service chain: Ready only once programmed, packets through it to the HBN pods, none once it is deleted.
    assert "dpuservicechains/hbn-to-fabric Ready after" in text
    for dpu in DPUS:
        for port in "01":
            ping = f"DPU {dpu}: ping 10.100.{port}.1 (fabric p{port}) -> 10.100.{port}.2 (HBN p{port}_if)"
            assert f"traffic passes: {ping}: 3/3 replies" in text
            assert f"traffic stops: {ping}: no reply" in text
        assert re.search(rf"traffic passes: DPU {dpu}: iperf3 TCP fabric p0 -> HBN p0_if \(server in pod "
                         rf"{NAMESPACE}/\S*doca-hbn\S+\): [\d.]+ Gbit/s", text), text
    assert text.index("traffic stops:") > text.index("deleting DPUServiceChain hbn-to-fabric")
    # ServiceChains live in the DPU cluster, where the controller mirrors them for the DPU nodes.
    servicechains = lab.kubectl("get", "servicechains", "-n", NAMESPACE, "-o", "name",
                                kubeconfig=lab.dpu_kubeconfig).split()
    assert sorted(servicechains) == ["servicechain.svc.dpu.nvidia.com/hbn-to-fabric-worker1-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/hbn-to-fabric-worker2-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/lab-svc-to-fabric-worker1-0000-08-00",
                              "servicechain.svc.dpu.nvidia.com/lab-svc-to-fabric-worker2-0000-08-00"]

    # The service, deployed as upstream's users do: a DPUService naming upstream's hbn chart in its public
    # repository, installed by the controller with Helm from the lab's loopback mirror. Its DaemonSet runs a pod on
    # every DPU, whose net1 (the DPUServiceInterface the DPUService lists, added to the pods' Multus annotation by
    # the controller) Multus attached through our plugin: on br-sfc, with an address from the pool, chained to p2.
    assert "dpuserviceipams/lab-pool Ready after" in text
    assert "dpuservices/lab-svc Ready after" in text
    pods = _dpuservice_pods(lab, "lab-svc")
    addresses = []
    for pod in pods:
        dpu, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
        assert json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]) == [
            {"name": "mybrsfc-pool", "interface": "net1"}]
        status = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
        net1 = next(n for n in status if n.get("interface") == "net1")
        address = ipaddress.ip_address(net1["ips"][0])
        assert address in ipaddress.ip_network("10.200.0.0/24")
        assert address != ipaddress.ip_address("10.200.0.1"), "the pool's gateway went to a pod"
        addresses.append(address)
        assert re.search(rf"DPU {dpu}: pod {NAMESPACE}/\S+ of DPUService lab-svc Running; its kubelet's CNI "
                         r"\(Multus\) added NAD mybrsfc-pool \(.*\): net1 ip \S+ from DPUServiceIPAM lab-pool", text)
        # The rolling update re-provisioned the DPU: its Node came back and the DaemonSet made the pod again (a new
        # name, a new lease); the lab names the live one.
        assert re.findall(rf"DPU {dpu}: pod {NAMESPACE}/(\S+) of DPUService lab-svc Running", text)[-1] == name
        assert _bridge_of(lab, dpu, f"{NAMESPACE}/{name}/net1") == "br-sfc"
        # The address last shown through the chain is the live one.
        shown = re.findall(rf"traffic passes: DPU {dpu}: ping 10\.200\.0\.254 \(fabric p2\) -> (\S+) "
                           r"\(service pod net1\): 3/3 replies", text)
        assert shown, text
        assert shown[-1] == str(address), (shown, status)
    assert len(set(addresses)) == 2, "each DPU leases from its own block of the pool"

    second = subprocess.run([*DPF, "lab", "--workdir", str(workdir), "--for", "0"], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 1
    assert "another lab is running" in second.stdout


def _dpuservice_pods(lab: RunningLab, service: str) -> list[dict]:
    """DPUService `service`, deployed as upstream's users deploy one: Ready, naming upstream's chart in its public
    repository (installed from the lab's mirror); its pods, one per DPU, Running, from one DaemonSet Helm made."""
    obj = json.loads(lab.kubectl("get", "dpuservice", service, "-n", NAMESPACE, "-o", "json"))
    assert obj["spec"]["helmChart"]["source"] == {"repoURL": "https://helm.ngc.nvidia.com/nvidia/doca",
                                                  "chart": "doca-hbn", "version": "1.0.1"}
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", obj["status"]
    listed = lab.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"svc.dpu.nvidia.com/service={service}", "-o", "json",
                         kubeconfig=lab.dpu_kubeconfig)
    pods = [p for p in json.loads(listed)["items"] if not p["metadata"].get("deletionTimestamp")]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(DPUS), f"{service}: one pod per DPU"
    assert all(p["status"]["phase"] == "Running" for p in pods), [p["status"] for p in pods]
    owners = {o["name"] for p in pods for o in p["metadata"]["ownerReferences"] if o["kind"] == "DaemonSet"}
    assert len(owners) == 1, [p["metadata"]["ownerReferences"] for p in pods]
    daemonset = json.loads(lab.kubectl("get", "daemonset", owners.pop(), "-n", NAMESPACE, "-o", "json",
                                       kubeconfig=lab.dpu_kubeconfig))
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    return pods


def _fabric_p0(lab: RunningLab, dpu: str) -> str:
    """The fabric namespace on `dpu`'s uplink p0, as the lab prints it (its p1's ends in 1 instead of 0)."""
    usage = lab.out.lines[lab.out.lines.index(f"  # {dpu}: flows, and a ping through its chain"):]
    return next(line.split()[3] for line in usage if line.startswith("  ip netns exec dpf-lab")
                and "# HBN pod p0_if, via p0" in line)


def _mac_seen_from(netns: str, ip: str) -> str:
    """The MAC that answers `ip` from `netns` (a ping through the chain, then the neighbour table)."""
    subprocess.run([tool("ip"), "netns", "exec", netns, "ping", "-n", "-c", "1", "-W", "1", ip], check=True,
                   capture_output=True, timeout=20)
    out = subprocess.run([tool("ip"), "-n", netns, "-j", "neigh", "show", ip], capture_output=True, text=True,
                         check=True, timeout=20).stdout
    return str(json.loads(out)[0]["lladdr"])


def _bridge_of(lab: RunningLab, dpu: str, dpf_id: str) -> str:
    """The OVS bridge (in the DPU's switch, as the lab lists it) of the port our CNI plugged for `dpf_id`."""
    rundir = next(line.split()[0].split("=", 1)[1] for line in lab.out.lines[lab.out.lines.index(
        f"  # {dpu}: flows, and a ping through its chain"):] if line.startswith("  OVS_RUNDIR="))

    def vsctl(*args: str) -> str:
        return subprocess.run([tool("ovs-vsctl"), *args], capture_output=True, text=True, check=True, timeout=30,
                              env={**os.environ, "OVS_RUNDIR": rundir}).stdout.strip()

    rows = json.loads(vsctl("--format=json", "--columns=name,external_ids", "list", "Interface"))["data"]
    port = next(name for name, (_, ids) in rows if ["dpf-id", dpf_id] in ids)
    return vsctl("port-to-br", port)


def test_a_killed_dpu_agent_is_restarted_and_the_chain_still_works(lab: RunningLab) -> None:
    dpu = "worker1-0000-08-00"
    listed = lab.wait_for_line(rf"^  dpu agent {dpu}\s+(\d+)\s+(\S+)$", 1)
    old_pid = int(listed.group(1))
    assert old_pid in descendants(lab.proc.pid), "the lab lists the agent's pid"
    netns, hbn = _fabric_p0(lab, dpu), "10.100.0.2"  # worker1's fabric p0 -> HBN p0_if

    def ping() -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("ip"), "netns", "exec", netns, "ping", "-n", "-c", "3", "-W", "0.5", "-i", "0.2",
                               hbn], capture_output=True, text=True, timeout=20)

    os.kill(old_pid, signal.SIGKILL)
    # The DPU's emulated server restarts it, as systemd would on a DPU; the lab shows the server's lines.
    lab.wait_for_line(rf"^\[lab\] worker1: dpu agent {dpu} exited \(signal 9\); restarting in 0\.5s \(restart 1\)$",
                      10)
    new_pid = int(lab.wait_for_line(rf"^\[lab\] worker1: dpu agent {dpu} running again as pid (\d+); log: "
                                    rf"{re.escape(listed.group(2))}$", 10).group(1))
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
    # The DPUService goes first, while the controller runs to uninstall its Helm release from the DPU cluster.
    for service in ("doca-hbn", "lab-svc"):
        assert f"[lab] DPUService {service} deleted: its Helm release uninstalled from the DPU cluster" in \
            lab.out.text[stopping:]
    assert "restarting in" not in lab.out.text[stopping:], "a process stopped by the lab was restarted"
    leftovers = subprocess.run(["pgrep", "-f", str(lab.workdir)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "lab daemons outlived the lab"
    assert bed_namespaces("lab", lab.proc.pid) == [], "the lab's network namespaces outlived it"
    servers = [int(m) for m in re.findall(r"emulated in its own process \(pid (\d+)", lab.out.text)]
    assert len(servers) == 2
    for pid in servers:
        assert bed_namespaces("lab", pid) == [], "an emulated server's network namespaces outlived the lab"


def test_lab_help_explains_itself() -> None:
    out = subprocess.run([*DPF, "lab", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Ctrl-C" in out
    assert "--workdir" in out
    assert "--for SECONDS" in out
    assert "Restart=on-failure" in out
    assert "kill -9 $(pgrep -f 'agent dpu --node worker1')" in out, "how to try a fault"
    assert "--hosts N" in out
    assert "--use-case {hbn_only,hbn_ovn}" in out
    assert "--dpus-per-host M" in out

