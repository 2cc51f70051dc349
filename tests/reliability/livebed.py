"""A live chain for the reliability suites, and the probes they judge it with.

The bed is the end-to-end one (`tests/e2e/conftest.py`: host and DPU clusters, the controller process with
mTLS, two emulated DPUs with OVS and their agent processes, uplinks p0/p1 into fabric namespaces), with the
lab's hbn_only interfaces and chain `hbn-to-fabric` programmed on DPU a and the HBN pod plugged. On top:
- `Pinger`: a 20/s ping through the chain that runs as long as a test needs, losses counted by sequence number;
- `ReadyWatch`: the chain's Ready condition sampled every 100 ms, to time when it went False and came back;
- `Leftovers`: what must not outlive the objects that made it (DPU-cluster sets and per-node objects, flows of
  other cookies, `dpf-sfc-chain-` bridge records, ports, orphaned `ovs-ofctl` processes, tracebacks in logs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dpf.agent.sfc.desired import CHAIN_RECORD, chain_cookie, record_key
from dpf.lab import chains
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.netns import NetnsBed, Pod
from dpf.lab.bed.process import wait_until
from dpf.lab.dpus import EmulatedDpu
from tests.e2e.conftest import Bed, e2e_bed
from tests.e2e.test_sfc_chain import cookie_flows, plug_hbn

CHAIN = "hbn-to-fabric"
LIVE_INTERFACES = ("p0", "p1", "p0-sf", "p1-sf")
TIMEOUT = 30.0
SVC = chains.SVC


@dataclass
class Live:
    """The bed with `hbn-to-fabric` Ready on DPU a."""

    bed: Bed
    hbn: dict[str, Pod]

    @property
    def a(self) -> str:
        return self.bed.nodes[0]

    @property
    def ns(self) -> str:
        return self.bed.namespace

    @property
    def cookie(self) -> int:
        return chain_cookie(self.ns, f"{CHAIN}-{self.a}")

    @property
    def fabric(self) -> dict[str, Pod]:
        return self.bed.dpus[self.a].pods

    def pingers(self) -> dict[str, Pinger]:
        """A 20/s ping through each of the chain's two switches (fabric p0 → HBN p0_if, fabric p1 → HBN p1_if)."""
        return {"p0": Pinger(self.fabric["fa0"].netns, self.hbn["p0"].ip),
                "p1": Pinger(self.fabric["fa1"].netns, self.hbn["p1"].ip)}

    def chain_flows(self) -> list[str]:
        return sorted(cookie_flows(self.bed.dpus[self.a].flows(), self.cookie))

    def chain_ready(self) -> bool:
        return self.bed.host_reader.is_ready("dpuservicechains", self.ns, CHAIN)

    def logs(self) -> dict[str, Path]:
        out = {"controller": self.bed.controller.workdir / "controller.log"}
        out.update({f"agent {name}": dpu.workdir / "agent.log" for name, dpu in self.bed.dpus.items()})
        return out


@contextlib.contextmanager
def live_chain(host: ControlPlane, dpu_cluster: ControlPlane, namespace: str, netns: NetnsBed,
               workdir: Path) -> Iterator[Live]:
    """The end-to-end bed (as `tests/e2e/conftest.py` builds it) with the hbn_only chain Ready and passing
    traffic. `namespace` must exist in `host`; it is created in `dpu_cluster` and removed again."""
    with e2e_bed(host, dpu_cluster, namespace, netns, workdir) as bed:
        hbn = plug_hbn(bed, bed.nodes[0])
        objects = chains.hbn_only(namespace, bed.group)
        bed.apply(objects)
        for obj in objects:
            plural = "dpuservicechains" if obj["kind"] == "DPUServiceChain" else "dpuserviceinterfaces"
            wait_until(lambda o=obj, p=plural: bed.host_reader.is_ready(p, namespace, o["metadata"]["name"]),
                       TIMEOUT, f"{obj['kind']} {obj['metadata']['name']} Ready")
        live = Live(bed, hbn)
        fabric = live.fabric
        # The first packets resolve ARP through the userspace datapath's upcalls: a few seconds, any reply counts.
        assert fabric["fa0"].ping(hbn["p0"].ip, count=5, wait=3), "the live chain passes no traffic on p0"
        assert fabric["fa1"].ping(hbn["p1"].ip, count=5, wait=3), "the live chain passes no traffic on p1"
        yield live


# -- traffic ---------------------------------------------------------------------------------------------


@dataclass
class PingResult:
    transmitted: int
    received: int
    lost: list[int]
    """Sequence numbers that got no reply (the last one sent, possibly still in flight at the stop, excluded)."""

    def summary(self) -> str:
        return f"{len(self.lost)} lost of {self.transmitted}" + (f" (icmp_seq {_ranges(self.lost)})"
                                                                 if self.lost else "")


def _ranges(seqs: list[int]) -> str:
    out, start = [], None
    for i, s in enumerate(seqs):
        start = s if start is None else start
        if i + 1 == len(seqs) or seqs[i + 1] != s + 1:
            out.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ",".join(out)


class Pinger:
    """A 20/s ping from `netns` to `ip` until `stop()`; every reply recorded by icmp_seq."""

    def __init__(self, netns: str, ip: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-n", "-i", "0.05", "-W", "1", ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.replies: set[int] = set()
        self.tail: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"icmp_seq=(\d+) ttl=", line):
                self.replies.add(int(m[1]))
            else:
                self.tail.append(line)

    def stop(self, settle: float = 1.2) -> PingResult:
        time.sleep(settle)  # every request but the last has had its reply's time
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        text = "".join(self.tail)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        if m is None:
            raise RuntimeError(f"ping printed no summary: {text[-500:]}")
        transmitted = int(m[1])
        lost = [s for s in range(1, transmitted) if s not in self.replies]
        return PingResult(transmitted, len(self.replies), lost)


# -- status over time ----------------------------------------------------------------------------------


@dataclass
class ReadyWatch:
    """Samples one object's Ready condition every `interval` seconds in a thread."""

    reader: chains.Reader
    plural: str
    namespace: str
    name: str
    interval: float = 0.1
    samples: list[tuple[float, str, str]] = field(default_factory=list)
    """(monotonic time, status, message) of every sample."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.reader.condition(self.plural, self.namespace, self.name)
                status, message = (found["status"], found.get("message", "")) if found else ("Absent", "")
            except Exception as exc:  # noqa: BLE001 - a sample failed (apiserver busy); record it, go on
                status, message = "Error", str(exc)[:200]
            self.samples.append((time.monotonic(), status, message))
            self._stop.wait(self.interval)

    def stop(self) -> ReadyWatch:
        self._stop.set()
        self._thread.join(5)
        return self

    def not_true(self, since: float = 0.0) -> list[tuple[float, str, str]]:
        return [s for s in self.samples if s[0] >= since and s[1] != "True"]

    def first_not_true(self, since: float) -> float | None:
        """Seconds from `since` to the first sample that is not True, or None."""
        hit = next((t for t, s, _ in self.samples if t >= since and s != "True"), None)
        return None if hit is None else hit - since

    def first(self, status: str, since: float) -> float | None:
        """Seconds from `since` to the first sample with `status` at or after it."""
        hit = next((t for t, s, _ in self.samples if t >= since and s == status), None)
        return None if hit is None else hit - since


# -- leftovers -----------------------------------------------------------------------------------------


PER_NODE = ("serviceinterfacesets", "serviceinterfaces", "servicechainsets", "servicechains")


@dataclass
class Baseline:
    ports: dict[str, list[str]]
    chain_flows: list[str]


def baseline(live: Live) -> Baseline:
    return Baseline({name: sorted(dpu.ports()) for name, dpu in live.bed.dpus.items()}, live.chain_flows())


def leftovers(live: Live, base: Baseline) -> list[str]:
    """Everything that should be gone once only the live chain's objects exist, as readable lines."""
    out: list[str] = []
    ns, a = live.ns, live.a
    host = chains.Reader(live.bed.host.client)
    for plural in ("dpuserviceinterfaces", "dpuservicechains", "dpuserviceipams"):
        keep = {CHAIN} if plural == "dpuservicechains" else set(LIVE_INTERFACES)
        for obj in host.list(plural, ns):
            if obj["metadata"]["name"] not in keep:
                out.append(f"host {plural}/{obj['metadata']['name']} "
                           f"(deletionTimestamp {obj['metadata'].get('deletionTimestamp')}, "
                           f"finalizers {obj['metadata'].get('finalizers')})")
    dpu = chains.Reader(live.bed.dpu_cluster.client)
    keep_sets = {*LIVE_INTERFACES, CHAIN}
    keep_nodes = {f"{i}-{n}" for i in LIVE_INTERFACES[:2] for n in live.bed.nodes}
    keep_nodes |= {f"{i}-{a}" for i in LIVE_INTERFACES[2:]} | {f"{CHAIN}-{a}"}
    for plural in PER_NODE:
        keep = keep_sets if plural.endswith("sets") else keep_nodes
        for obj in dpu.list(plural, ns):
            if obj["metadata"]["name"] not in keep:
                ready = next((c["status"] for c in (obj.get("status") or {}).get("conditions") or ()
                              if c["type"] == "Ready"), None)
                out.append(f"DPU cluster {plural}/{obj['metadata']['name']} (Ready={ready}, "
                           f"deletionTimestamp {obj['metadata'].get('deletionTimestamp')}, "
                           f"finalizers {obj['metadata'].get('finalizers')})")
    for name, emulated in live.bed.dpus.items():
        own = f"cookie={live.cookie:#x}," if name == a else None
        for flow in emulated.flows():
            if own is None or not flow.startswith(own):
                out.append(f"{name}: flow {flow[:160]}")
        records = _bridge_records(emulated)
        want = {record_key(live.cookie)} if name == a else set()
        out += [f"{name}: bridge record {key}={value}" for key, value in records.items() if key not in want]
        ports = sorted(emulated.ports())
        if ports != base.ports[name]:
            out.append(f"{name}: br-sfc ports {ports}, before {base.ports[name]}")
        if ovn_ports := emulated.ports("br-ovn"):  # the other end of `ovn` interfaces' patch
            out.append(f"{name}: br-ovn ports {ovn_ports}")
    if live.chain_flows() != base.chain_flows:
        out.append(f"{a}: the live chain's flows changed: {live.chain_flows()} (before {base.chain_flows})")
    return out


def _bridge_records(dpu: EmulatedDpu) -> dict[str, str]:
    if not dpu.has_bridge():
        return {}
    assert dpu.ovs is not None
    raw = dpu.ovs.vsctl("--format=json", "get", "bridge", "br-sfc", "external_ids").stdout.strip()
    pairs = re.findall(r'"?([\w./-]+)"?="?([^",}]*)"?', raw.strip("{}"))
    return {k: v for k, v in pairs if k.startswith(CHAIN_RECORD)}


def orphaned_ofctl(live: Live) -> list[str]:
    """`ovs-ofctl` processes talking to one of the bed's switches whose parent is not a running agent."""
    agents = {dpu.agent.pid for dpu in live.bed.dpus.values() if dpu.agent is not None}
    rundirs = [str(dpu.ovs.rundir) for dpu in live.bed.dpus.values() if dpu.ovs is not None]
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if "ovs-ofctl" not in cmdline.split(" ")[0] or not any(r in cmdline for r in rundirs):
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid not in agents:
            out.append(f"pid {proc.name} (parent {ppid}): {cmdline.strip()[:200]}")
    return out


def tracebacks(live: Live) -> dict[str, list[str]]:
    """Per log: the last line of each Python traceback (the exception), so a report says what failed."""
    out: dict[str, list[str]] = {}
    for what, path in live.logs().items():
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        found = []
        for i, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith((" ", "\t"))), i)
                found.append(lines[end][:300])
        if found:
            out[what] = found
    return out


def log_offsets(live: Live) -> dict[str, int]:
    return {what: (path.stat().st_size if path.exists() else 0) for what, path in live.logs().items()}


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def log_lines(live: Live, log: str, needles: tuple[str, ...]) -> list[str]:
    """The lines of `log` (a key of `Live.logs()`) that contain any of `needles`."""
    path = live.logs()[log]
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line for line in lines if any(n in line for n in needles)]
