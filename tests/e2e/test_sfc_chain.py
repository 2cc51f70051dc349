"""Service function chaining from CR to packets, as a user drives it: DPUServiceInterfaces and a DPUServiceChain
shaped like upstream's hbn_only guide go into the host cluster; the controller mirrors them into the DPU
cluster, expands them per DPU node, resolves the chain's port selectors and streams each node its state;
the DPU agents program OVS; packets pass. Everything is real: two apiservers, the controller process with
mTLS, DPU agent processes with their CNI servers, OVS (userspace datapath) in network namespaces.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from dpf.agent.sfc.desired import chain_cookie
from dpf.lab import chains
from dpf.lab.bed.netns import Pod
from dpf.lab.bed.process import Child, wait_until

from .conftest import Bed

HBN_POD = "doca-hbn-ds-x7k2q"
TIMEOUT = 30


def cookie_flows(flows: list[str], cookie: int) -> list[str]:
    """The chain's own flows (those `learn` adds at run time carry an idle timeout and are left out)."""
    return [f for f in flows if f.startswith(f"cookie={cookie:#x},") and "idle_timeout=" not in f.split(" actions=")[0]]


def ping_while(netns: str, ip: str, action: Callable[[], object], seconds: int = 5) -> str:
    """ping's summary for a 20/s stream from `netns` to `ip` that runs while `action` happens."""
    # A count, not a deadline (-w): ping stops at a deadline without waiting for the last reply, and counts it lost.
    pinger = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-i", "0.05", "-c", str(seconds * 20),
                               "-W", "1", ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        action()
        out, _ = pinger.communicate(timeout=seconds + 10)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    return out


def plug_hbn(bed: Bed, dpu: str) -> dict[str, Pod]:
    """The HBN pod on `dpu`: its object in the DPU cluster, and its p0_if/p1_if plugged by the CNI plugin."""
    bed.apply(chains.hbn_pod(bed.namespace, HBN_POD, dpu), bed.dpu_cluster)
    node = bed.dpus[dpu]
    return {"p0": node.plug_pod(bed.bin_dir, bed.namespace, HBN_POD, "p0_if", "10.80.0.2/24", "h0"),
            "p1": node.plug_pod(bed.bin_dir, bed.namespace, HBN_POD, "p1_if", "10.80.1.2/24", "h1")}


def tcp_echo(server: Pod, client: Pod, log) -> bool:
    script = ("import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
              f"s.bind(('{server.ip}',7000));s.listen();c,_=s.accept();c.sendall(c.recv(64));c.close()")
    child = Child("tcp echo", ["ip", "netns", "exec", server.netns, "python3", "-c", script], log)
    try:
        probe = ("import socket,time\nfor _ in range(40):\n try:\n"
                 f"  s=socket.create_connection(('{server.ip}',7000),timeout=1);break\n"
                 " except ConnectionRefusedError: time.sleep(0.05)\n"
                 "s.sendall(b'through the chain');print(s.recv(64).decode())")
        result = client.exec("python3", "-c", probe, check=False, timeout=15)
        return result.returncode == 0 and result.stdout.strip() == "through the chain"
    finally:
        child.stop()


def test_hbn_chain_from_cr_to_packets_and_back(bed: Bed, tmp_path) -> None:
    a, b = bed.nodes
    ns, reader = bed.namespace, bed.host_reader
    fabric = bed.dpus[a].pods
    hbn = plug_hbn(bed, a)
    interfaces = [o for o in chains.hbn_only(ns, bed.group) if o["kind"] == "DPUServiceInterface"]
    chain = next(o for o in chains.hbn_only(ns, bed.group) if o["kind"] == "DPUServiceChain")
    bed.apply(interfaces)
    for obj in interfaces:
        wait_until(lambda o=obj: reader.is_ready("dpuserviceinterfaces", ns, o["metadata"]["name"]), TIMEOUT,
                   f"DPUServiceInterface {obj['metadata']['name']} Ready")
    # Uplinks everywhere, HBN ports only where HBN runs; no chain yet, and br-sfc is fail_mode=secure.
    assert {"p0", "p1"} <= set(bed.dpus[b].ports())
    assert not fabric["fa0"].ping(hbn["p0"].ip, wait=0.5)
    # That unanswered ping left fa0 resolving 10.80.0.x: its ARP probes go on for ~3 s, and packets of a later
    # ping queued behind the entry are dropped when it fails, even once the chain forwards (seen in a full run:
    # flows installed, fa0's neighbour FAILED, a fresh ping answered in 10 ms). Start the next one clean.
    fabric["fa0"].exec("ip", "neigh", "flush", "dev", fabric["fa0"].ifname)

    # The chain is created while dpu-a's agent is down: it cannot be Ready, and says why.
    bed.dpus[a].stop_agent()
    bed.apply([chain])
    set_name = f"{ns}/hbn-to-fabric-{a}"
    waiting = wait_until(lambda: _message_if(reader.condition("dpuservicechains", ns, "hbn-to-fabric",
                                                              "ServiceChainSetReady"), "agent not connected"),
                         TIMEOUT, "the chain to report dpu-a's agent as not connected")
    assert set_name in waiting["message"]
    assert not reader.is_ready("dpuservicechains", ns, "hbn-to-fabric")
    cookie = chain_cookie(ns, f"hbn-to-fabric-{a}")
    assert cookie_flows(bed.dpus[a].flows(), cookie) == []

    started = time.monotonic()
    bed.start_agent(a)
    wait_until(lambda: reader.is_ready("dpuservicechains", ns, "hbn-to-fabric"), TIMEOUT, "the chain Ready")
    ready_after = time.monotonic() - started
    # Ready means programmed: both switches' flows are on dpu-a, none on dpu-b, and packets pass.
    assert len(cookie_flows(bed.dpus[a].flows(), cookie)) == 4
    assert bed.dpus[b].flows() == [], "dpu-b is not selected by the chain"
    assert chains.Reader(bed.dpu_cluster.client).get("servicechains", ns, f"hbn-to-fabric-{b}") is None
    # The first packets also resolve ARP through the userspace datapath's upcalls: on a loaded 2-core machine
    # that took over 1.4 s once, so a few seconds of pings, any reply counting.
    for src, dst in (("fa0", "p0"), ("fa1", "p1")):
        if not fabric[src].ping(hbn[dst].ip, count=5, wait=3):
            raise AssertionError(_datapath_evidence(bed, a, fabric[src], hbn[dst], time.monotonic() - started))
    assert tcp_echo(hbn["p0"], fabric["fa0"], tmp_path / "echo.log")
    scs = chains.Reader(bed.dpu_cluster.client).get("servicechainsets", ns, "hbn-to-fabric")
    assert (scs["status"]["numberApplied"], scs["status"]["numberReady"]) == (1, 1)
    print(f"\nchain Ready {ready_after:.2f}s after dpu-a's agent started")

    # Restarting the agent, or the controller, does not touch the data plane: not one ping of a 20/s stream is
    # lost, and the chain stays programmed and Ready.
    connected = f"node {a} (dpu) connected"

    def times_connected() -> int:
        return bed.controller.child.log.read_text(errors="replace").count(connected)

    for restart in (lambda: (bed.dpus[a].stop_agent(), bed.start_agent(a)),
                    lambda: (bed.controller.stop(), bed.controller.start())):
        before = times_connected()
        out = ping_while(fabric["fa0"].netns, hbn["p0"].ip, restart)
        assert " 0% packet loss" in out, out
        assert len(cookie_flows(bed.dpus[a].flows(), cookie)) == 4
        wait_until(lambda: reader.is_ready("dpuservicechains", ns, "hbn-to-fabric"), TIMEOUT, "the chain Ready")
        # A restarted controller keeps the chain's Ready until the agents report, so Ready alone does not say
        # dpu-a's agent is back; the deletion below must be told to a connected agent to wait for its flows.
        wait_until(lambda b=before: times_connected() > b, TIMEOUT, "dpu-a's agent connected again")

    # Delete: the DPUServiceChain goes last, after the per-node chains and the set, and by then the
    # flows are gone: traffic stops.
    dpu_reader = chains.Reader(bed.dpu_cluster.client)
    # Polled owner first: an owner seen gone means every later read must find its dependents gone too.
    chain_of = [lambda: reader.get("dpuservicechains", ns, "hbn-to-fabric"),
                lambda: dpu_reader.get("servicechainsets", ns, "hbn-to-fabric"),
                lambda: dpu_reader.get("servicechains", ns, f"hbn-to-fabric-{a}")]
    bed.delete("dpuservicechain", "hbn-to-fabric")
    rounds: list[list[bool]] = []

    def all_gone() -> bool:
        rounds.append([get() is None for get in chain_of])
        return all(rounds[-1])

    wait_until(all_gone, TIMEOUT, "the chain's objects to be deleted", interval=0.02)
    assert all(gone == sorted(gone) for gone in rounds), f"an owner went before its dependents: {rounds}"
    assert cookie_flows(bed.dpus[a].flows(), cookie) == [], "the chain was deleted before its flows"
    assert not fabric["fa0"].ping(hbn["p0"].ip, wait=0.5)


def test_a_selector_matching_no_interface_is_named_and_nothing_is_programmed(bed: Bed) -> None:
    a = bed.nodes[0]
    ns, reader = bed.namespace, bed.host_reader
    plug_hbn(bed, a)
    bed.apply([o for o in chains.hbn_only(ns, bed.group) if o["kind"] == "DPUServiceInterface"])
    chain = next(o for o in chains.hbn_only(ns, bed.group) if o["kind"] == "DPUServiceChain")
    # Switch 0 resolves (p0 ↔ p0_sf); switch 1 names an uplink no DPU has.
    chain["spec"]["template"]["spec"]["template"]["spec"]["switches"][1]["ports"][0] = {
        "serviceInterface": {"matchLabels": {"uplink": "p9"}}}
    bed.apply([chain])
    found = wait_until(lambda: _message_if(reader.condition("dpuservicechains", ns, "hbn-to-fabric",
                                                            "ServiceChainSetReady"), "uplink=p9"),
                       TIMEOUT, "the chain's condition to name the selector")
    assert f"switches[1].ports[0] selector uplink=p9 matches no ServiceInterface in namespace {ns} on node {a}" \
        in found["message"]
    ready = reader.condition("dpuservicechains", ns, "hbn-to-fabric")
    assert ready["status"] == "False"
    scs = chains.Reader(bed.dpu_cluster.client).condition("servicechainsets", ns, "hbn-to-fabric",
                                                          "ServiceChainsReady")
    assert scs["status"] == "False"
    assert "uplink=p9" in scs["message"]
    # Not even the switch that resolves is programmed: no partial chain.
    assert cookie_flows(bed.dpus[a].flows(), chain_cookie(ns, f"hbn-to-fabric-{a}")) == []

    # Fixing the selector programs the whole chain.
    chain["spec"]["template"]["spec"]["template"]["spec"]["switches"][1]["ports"][0] = {
        "serviceInterface": {"matchLabels": {"uplink": "p1"}}}
    bed.apply([chain])
    wait_until(lambda: reader.is_ready("dpuservicechains", ns, "hbn-to-fabric"), TIMEOUT, "the fixed chain Ready")
    assert len(cookie_flows(bed.dpus[a].flows(), chain_cookie(ns, f"hbn-to-fabric-{a}"))) == 4


def _datapath_evidence(bed: Bed, dpu: str, src: Pod, dst: Pod, since_start: float) -> str:
    """What the switch held when a ping through the chain got no reply (ports with their ofports next to the
    flows, port counters, the agent's log), then whether and when a reply came after all: flows naming a stale
    ofport say the product reported Ready too early; a late reply says the datapath was only slow. The test
    fails either way."""
    node = bed.dpus[dpu]
    assert node.ovs is not None
    ovs = node.ovs
    out = [f"no reply {since_start:.2f}s after the agent started"]
    for argv in (("show", "br-sfc"), ("dump-flows", "br-sfc"), ("dump-ports", "br-sfc")):
        out.append(f"--- ovs-ofctl {' '.join(argv)}\n" + ovs.ofctl(*argv, check=False).stdout)
    out.append("--- interfaces\n" + ovs.vsctl("--columns=name,ofport,external_ids", "list", "interface",
                                             check=False).stdout)
    out.append("--- bridge\n" + ovs.vsctl("--columns=name,external_ids", "list", "bridge", check=False).stdout)
    out.append("--- fdb\n" + ovs.appctl("ovs-vswitchd", "fdb/show", "br-sfc", check=False).stdout)
    out.append("--- src neigh\n" + src.exec("ip", "neigh", check=False).stdout)
    out.append("--- dst neigh/link\n" + dst.exec("ip", "neigh", check=False).stdout
               + dst.exec("ip", "-s", "link", check=False).stdout)
    began = time.monotonic()
    replied = src.exec("ping", "-n", "-c", "1", "-W", "1", dst.ip, check=False).returncode == 0
    while not replied and time.monotonic() - began < 30:
        replied = src.exec("ping", "-n", "-c", "1", "-W", "1", dst.ip, check=False).returncode == 0
    out.append(f"--- later ping: {'replied' if replied else 'no reply'} after {time.monotonic() - began:.2f}s")
    out.append("--- ovs-ofctl dump-flows br-sfc (after)\n" + ovs.ofctl("dump-flows", "br-sfc", check=False).stdout)
    out.append("--- agent log\n" + (node.workdir / "agent.log").read_text()[-20000:])
    out.append("--- vswitchd log\n" + ovs.log("ovs-vswitchd").read_text()[-8000:])
    text = "\n".join(out)
    (node.workdir.parent / "evidence.txt").write_text(text)
    return text


def _message_if(condition: dict | None, text: str) -> dict | None:
    return condition if condition and text in condition.get("message", "") else None
