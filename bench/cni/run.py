#!/usr/bin/env python3
"""CNI ADD/DEL latency, side by side on real OVS: dpf-sfc-cni vs ovs-cni vs Debian bridge + host-local.

    sudo .venv/bin/python bench/cni/run.py [--samples 100] [--concurrency 20] [--record]

Each plugin is run as kubelet would run it (one process per call, stdin config, CNI_* env) against
its own bridge of one ovsdb-server/ovs-vswitchd (userspace datapath) in a private netns; the whole
bench process enters that netns first, so host-side veths land where vswitchd sees them, as on a
DPU. Sequential: `samples` ADDs one after another, then as many DELs. Concurrent: rounds of
`concurrency` simultaneous ADDs (then DELs). The plugins take turns call by call (sequential) and
round by round (concurrent), so a noisy neighbour slows all of them alike. Ours runs the frozen
onedir binary against the agent's CNI server with in-agent IPAM; ovs-cni (built on demand from
packaging/upstream/ovs-cni) and bridge use host-local IPAM. Each plugin gets its own interface
name in the shared pod namespaces. `--record` writes the table into bench/RESULTS.md (## cni).

`--baseline PYTHON` adds an A/B row: our plugin against a second agent run by another checkout's Python
(`/path/to/other/.venv/bin/python`, or a script that puts another tree's `dpf` first on PYTHONPATH), taking
turns with ours call by call, so a change to the agent is compared under the same load. The baseline agent
gets a switch of its own (its own ovsdb-server and ovs-vswitchd in a netns of their own, bridge br-base):
on a shared switch each agent's OVSDB client would also receive, and pay for, the other's port updates.
`--ours-only` leaves out the other plugins (quicker repeated A/B runs). Every row also gives the CPU time
per call of the agent serving it (user + system, all threads, from /proc) and of that agent's switch
(ovsdb-server + ovs-vswitchd; shared by every plugin but ours and the baseline's), over its own calls only.
`--agent-process dpu` serves ours (and the baseline) with the whole DPU agent instead of the CNI server alone:
the process a DPU runs, whose OVSDB client(s) also carry the SFC programmer's replica of the switch.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dpf.lab.bed.netns import NetnsBed, reap_stale
from dpf.lab.bed.ovs import OvsSwitch
from dpf.lab.bed.process import Child, exit_on_sigterm, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from ovs_cni import ensure_ovs_cni  # noqa: E402 - sibling module of a script


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Plugin:
    name: str
    binary: Path
    conf: dict
    cni_path: str
    ifname: str = "net1"
    adds: dict[str, list[float]] = field(default_factory=dict)
    dels: dict[str, list[float]] = field(default_factory=dict)
    agent_pids: tuple[int, ...] = ()  # the agent serving this plugin (CPU per call)
    switch_pids: tuple[int, ...] = ()  # its ovsdb-server and ovs-vswitchd
    cpu: dict[str, list[float]] = field(default_factory=dict)  # "<mode> ADD" -> [agent s, switch s]

    def charge(self, key: str, agent: float, switch: float) -> None:
        total = self.cpu.setdefault(key, [0.0, 0.0])
        total[0] += agent
        total[1] += switch

    def call(self, command: str, container: str, netns: str) -> float:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": self.ifname, "CNI_PATH": self.cni_path,
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container};K8S_POD_UID={container}"}
        started = time.perf_counter()
        out = subprocess.run([str(self.binary)], input=json.dumps(self.conf), env=env, capture_output=True, text=True,
                             timeout=120)
        elapsed = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"{self.name} {command} {container} failed: {out.stdout} {out.stderr}")
        return elapsed


def host_local(data_dir: Path, subnet: str) -> dict:
    return {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]]}


def enter_netns(name: str) -> None:
    """Move this (still single-threaded) process into netns `name`; children inherit it."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        raise SystemExit(f"setns({name}) failed: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def null_agent(path: Path) -> None:
    """A stand-in agent that answers every request at once (daemon thread): the `shim floor` row, i.e. what
    our plugin costs before the agent does any work (process start, socket round trip)."""
    import asyncio
    import threading

    answer = json.dumps({"code": 0, "stdout": json.dumps({"cniVersion": "1.0.0", "interfaces": [], "ips": []})})

    async def serve() -> None:
        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b'{"ack":true}\n' + answer.encode() + b"\n")
            await writer.drain()
            writer.close()

        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.start_unix_server(one, path=str(path))
        await asyncio.Event().wait()

    threading.Thread(target=lambda: asyncio.run(serve()), name="null-agent", daemon=True).start()
    wait_until(path.exists, 10, "the null agent's socket")


def start_agent(python: Path, sock: Path, switch: OvsSwitch, state: Path, pools: Path, log: Path,
                netns: str | None = None) -> Child:
    """The agent's CNI server run alone (`python -m dpf.agent.cni`), as the CNI tests run it; in `netns` (that
    of its switch, where the host ends of its veths must land) when it is not the bench's own."""
    prefix = ["ip", "netns", "exec", netns] if netns else []  # ip execs the agent: the pid stays the agent's
    agent = Child(f"dpf-cni-agent-{sock.parent.name}", [*prefix, str(python), "-m", "dpf.agent.cni", "--socket",
                                                        str(sock), "--ovsdb", f"unix:{switch.db_sock}", "--state-dir",
                                                        str(state), "--pools", str(pools)], log)
    wait_until(sock.exists, 30, "agent socket", while_alive=[agent])
    return agent


def seed_pools(state_dir: Path, pools: list[dict]) -> None:
    """Store `pools` as the IPAMBlocks a DPU agent last received from the controller: `dpf agent dpu` re-applies
    its stored state at start-up, so it serves CNI ADDs from these pools with no controller running."""
    from dpf.agent.runtime.store import StateStore, StoredResource, TypeState
    from dpf.proto import versioning
    from dpf.proto.v1 import ipam_pb2

    resources = {}
    for pool in pools:
        body = versioning.pack(ipam_pb2.IPAMBlock(
            pool=pool["pool"], pool_type=ipam_pb2.IPAM_POOL_TYPE_IPPOOL, subnet=pool["subnet"],
            start=pool["start"], end=pool["end"], gateway=pool.get("gateway", "")))
        resources[pool["pool"]] = StoredResource(versioning.resource_version(body), body)
    type_url = versioning.type_url(ipam_pb2.IPAMBlock)
    StateStore(state_dir / "runtime").save(TypeState(
        type_url, versioning.set_version({n: r.version for n, r in resources.items()}), resources))


def start_dpu_agent(python: Path, sock: Path, switch: OvsSwitch, bridge: str, state: Path, pools: list[dict],
                    log: Path, netns: str | None = None) -> Child:
    """The whole DPU agent (`dpf agent dpu --cni-socket`), as a DPU runs it: the SFC programmer on `bridge` and
    the CNI server in one process, with the process's OVSDB client(s). Its controller is unreachable (the
    stream keeps retrying); the pools come from its stored state (`seed_pools`)."""
    seed_pools(state, pools)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    agent = Child(f"dpf-dpu-agent-{sock.parent.name}", [
        *prefix, str(python), "-m", "dpf.cli", "agent", "dpu", "--node", "bench", "--controller", "127.0.0.1:9",
        "--insecure", "--state-dir", str(state), "--ovs-rundir", str(switch.rundir), "--bridge", bridge,
        "--datapath-type", "netdev", "--port-type", "system", "--cni-socket", str(sock)], log)
    wait_until(sock.exists, 60, "agent socket", while_alive=[agent])
    return agent


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system time of the processes (all their threads) so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def metered(p: Plugin, key: str, work):
    """Run `work()`, charging the CPU its agent and switch spent meanwhile to `p` under `key`."""
    agent, switch = cpu_seconds(p.agent_pids), cpu_seconds(p.switch_pids)
    result = work()
    p.charge(key, cpu_seconds(p.agent_pids) - agent, cpu_seconds(p.switch_pids) - switch)
    return result


def turns(plugins: list[Plugin], i: int) -> list[Plugin]:
    """The order of the i-th turn: reversed every other turn, so no plugin always goes first (an A/A run of
    one agent twice, in a fixed order, put 17-28 % between the two rows' concurrent ADD p50)."""
    return plugins if i % 2 == 0 else plugins[::-1]


def sequential(plugins: list[Plugin], pods: list[str]) -> None:
    """ADD every pod, then DEL every pod; the plugins take turns call by call, so load swings hit all alike."""
    for p in plugins:
        p.adds["sequential"], p.dels["sequential"] = [], []
    for command, key in (("ADD", "adds"), ("DEL", "dels")):
        for i, pod in enumerate(pods):
            for p in turns(plugins, i):
                name = f"{p.conf['name']}-s{i}"
                getattr(p, key)["sequential"].append(metered(
                    p, f"sequential {command}", lambda p=p, c=command, n=name, pod=pod: p.call(c, n, pod)))


def concurrent(plugins: list[Plugin], pods: list[str], width: int) -> None:
    """Rounds of `width` simultaneous ADDs, then DELs; the plugins take turns round by round."""
    mode = f"{width} concurrent"
    for p in plugins:
        p.adds[mode], p.dels[mode] = [], []
    with ThreadPoolExecutor(width) as pool:
        for start in range(0, len(pods) - width + 1, width):
            batch = pods[start:start + width]
            for p in turns(plugins, start // width):
                ids = [f"{p.conf['name']}-c{start + j}" for j in range(width)]
                p.adds[mode] += metered(p, f"{mode} ADD", lambda p=p, ids=ids, batch=batch: list(
                    pool.map(lambda c, pod: p.call("ADD", c, pod), ids, batch)))
                p.dels[mode] += metered(p, f"{mode} DEL", lambda p=p, ids=ids, batch=batch: list(
                    pool.map(lambda c, pod: p.call("DEL", c, pod), ids, batch)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def table(plugins: list[Plugin]) -> str:
    lines = ["| plugin | mode | ADD p50 | ADD p99 | DEL p50 | DEL p99 |", "|---|---|---|---|---|---|"]
    # A row per plugin and mode; the mode column carries the sample count.
    for mode in plugins[0].adds:
        for p in plugins:
            a, d = p.adds[mode], p.dels[mode]
            lines.append(f"| {p.name} | {mode} (n={len(a)}) | {pct(a, .5):.1f} ms | {pct(a, .99):.1f} ms | "
                         f"{pct(d, .5):.1f} ms | {pct(d, .99):.1f} ms |")
    return "\n".join(lines)


def cpu_table(plugins: list[Plugin]) -> str:
    """CPU ms per call of the serving agent (and its switch), for the plugins run by an agent of ours."""
    lines = ["| plugin | mode | agent CPU per ADD | per DEL | switch CPU per ADD | per DEL |",
             "|---|---|---|---|---|---|"]
    for mode in plugins[0].adds:
        for p in plugins:
            if not p.agent_pids:
                continue
            n = len(p.adds[mode])
            add, dele = p.cpu.get(f"{mode} ADD", [0, 0]), p.cpu.get(f"{mode} DEL", [0, 0])
            lines.append(f"| {p.name} | {mode} (n={n}) | {add[0] / n * 1000:.1f} ms | {dele[0] / n * 1000:.1f} ms | "
                         f"{add[1] / n * 1000:.1f} ms | {dele[1] / n * 1000:.1f} ms |")
    return "\n".join(lines)


NOTES = """
Reading it (this 2-core machine is shared with other builds; load average noted with each run):
- ovs-cni's default ADD includes a poll of the port's `link_state` every 600 ms; when vswitchd has not
  yet reported the link up at the first poll the ADD waits 600 ms (its sequential p99, and sometimes its
  p50). The `link_state_check_interval=5` row shows the cost of its mechanism alone.
- The `shim floor` row is our shim against an agent that answers at once: what every dpf-sfc-cni call
  costs before the agent does any work. At 20 concurrent it is most of our ADD time. The frozen shim
  costs ~19 ms of CPU per call (`perf stat`: PyInstaller's onedir bootloader execs itself once to set
  LD_LIBRARY_PATH, then starts an embedded interpreter; ~1000 page faults); 20 of them are ~0.4 s of CPU
  for 2 cores. A compiled binary doing as little costs ~2 ms (Debian's bridge answering VERSION: 2.1 ms
  of CPU, 20 concurrent p50 22 ms / p99 38 ms on this machine). So p99 < 100 ms at 20 concurrent ADDs
  is out of reach on 2 cores for any shim that starts a Python interpreter; it needs a compiled shim
  (same wire protocol, about 200 lines of C or Go).
- Inside the agent (per-phase wall times, 5 rounds of 20 concurrent ADDs, 2026-11-24): ADD p50 40-60 ms,
  p90 85-130 ms: lease fsync 16-22 ms, veth pair 13 ms, OVS port 9-20 ms (one batched OVSDB
  transaction for the ports that arrive together, plus vswitchd realizing it), pod addresses 5 ms. The
  lease write now runs while the veth and the port are made (ADD still answers only once it is on
  disk), which took about 20 ms off the agent's ADD p50. A larger netlink thread pool did not help
  (pyroute2 work is GIL-bound). CPU per ADD+DEL pair: agent 12 ms, ovs-vswitchd 5 ms, ovsdb-server 1 ms.
"""


def record(text: str, args: argparse.Namespace, load: float) -> None:
    results = REPO / "bench" / "RESULTS.md"
    body = (f"## cni\n\n`sudo .venv/bin/python bench/cni/run.py --samples {args.samples} "
            f"--concurrency {args.concurrency} --record` on {platform.node()} ({os.cpu_count()} cores), "
            f"{time.strftime('%Y-%m-%d')}, load average before the run {load:.1f}. Wall time per CNI "
            "call as the runtime sees it (process start included); OVS 3.1 userspace datapath; one run, all plugins "
            "side by side.\n\n" + text + "\n" + NOTES)
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if "\n## cni\n" in f"\n{old}":
        head, _, rest = f"\n{old}".partition("\n## cni\n")
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        new = (head + "\n" + body + tail).lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    results.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--baseline", type=Path, help="Python of another checkout: also run its agent (A/B row)")
    parser.add_argument("--ours-only", action="store_true", help="only our plugin (and the baseline, shim floor)")
    parser.add_argument("--agent-process", choices=("cni", "dpu"), default="cni",
                        help="what serves our plugin: the CNI server run alone (`python -m dpf.agent.cni`) or the "
                             "whole DPU agent as a DPU runs it (SFC programmer and CNI server in one process, "
                             "pools from its stored state, no controller)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cni needs root (netns, OVS)")
    load = os.getloadavg()[0]
    ours_bin = _load(REPO / "packaging" / "pyinstaller" / "build.py", "dpf_cni_build").ensure_binary()
    ovs_cni = ensure_ovs_cni()
    work = Path(tempfile.mkdtemp(prefix="dpf-bench-cni-"))
    exit_on_sigterm()
    reap_stale("b")  # namespaces of an earlier run that was SIGKILLed (its finally never ran)
    bed = NetnsBed(owner="b")
    switch = OvsSwitch(netns=bed.namespace("ovs"), rundir=work / "ovs")
    base_switch = OvsSwitch(netns=bed.namespace("ovsb"), rundir=work / "ovs-base") if args.baseline else None
    agents: list[Child] = []
    try:
        switch.start()
        for bridge in ("br-sfc",) if args.ours_only else ("br-sfc", "br-ovscni"):  # --ours-only: alike switches
            switch.add_bridge(bridge)
        if base_switch:
            base_switch.start()
            base_switch.add_bridge("br-base")
        pods = [bed.namespace(f"p{i}") for i in range(args.samples)]
        enter_netns(switch.netns)
        bindir = work / "bin"
        bindir.mkdir()
        (bindir / "dpf-sfc-cni").symlink_to(ours_bin)
        pools = [{"pool": "bench", "subnet": "10.80.0.0/16", "start": "10.80.0.10", "end": "10.80.3.250",
                  "gateway": "10.80.0.1"}]
        base_pools = [dict(pools[0], subnet="10.84.0.0/16", start="10.84.0.10", end="10.84.3.250", gateway="10.84.0.1")]

        def serve(python: Path, suffix: str, ovs: OvsSwitch, bridge: str, blocks: list[dict],
                  netns: str | None = None) -> Path:
            """Start an agent (per --agent-process) for `bridge` of `ovs`; its socket."""
            sock, state = work / f"run{suffix}" / "agent.sock", work / f"state{suffix}"
            log = work / f"agent{suffix}.log"
            if args.agent_process == "dpu":
                agents.append(start_dpu_agent(python, sock, ovs, bridge, state, blocks, log, netns=netns))
            else:
                pools_file = work / f"pools{suffix}.json"
                pools_file.write_text(json.dumps(blocks))
                agents.append(start_agent(python, sock, ovs, state, pools_file, log, netns=netns))
            return sock

        sock = serve(Path(sys.executable), "", switch, "br-sfc", pools)
        if args.baseline:
            where = subprocess.run([str(args.baseline), "-c", "import dpf.agent.cni; print(dpf.agent.cni.__file__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            if Path(where).resolve().is_relative_to(REPO):
                raise SystemExit(f"--baseline {args.baseline} imports this checkout ({where}): give it a Python "
                                 "whose dpf is another tree's (PYTHONSAFEPATH=1 keeps the working directory out)")
            print(f"baseline agent: {where}")
            base_sock = serve(args.baseline, "-base", base_switch, "br-base", base_pools, netns=base_switch.netns)
        plugins = [
            Plugin("ovs-cni v0.39.0", ovs_cni, {
                "cniVersion": "1.0.0", "name": "ovscni", "type": "ovs", "bridge": "br-ovscni",
                "socket_file": f"unix:{switch.db_sock}",
                "ipam": host_local(work / "hl-ovs", "10.81.0.0/16")},
                "/usr/lib/cni"),
            # ovs-cni polls the port's link_state every 600 ms by default (pkg/config/config.go) and
            # often misses the first poll; the tuned row shows the cost of its mechanism alone.
            Plugin("ovs-cni v0.39.0, link_state_check_interval=5", ovs_cni, {
                "cniVersion": "1.0.0", "name": "ovscni2", "type": "ovs", "bridge": "br-ovscni",
                "socket_file": f"unix:{switch.db_sock}", "link_state_check_interval": 5,
                "link_state_check_retries": 400, "ipam": host_local(work / "hl-ovs2", "10.83.0.0/16")},
                "/usr/lib/cni"),
            Plugin("dpf-sfc-cni", bindir / "dpf-sfc-cni", {
                "cniVersion": "1.0.0", "name": "sfc", "type": "dpf-sfc-cni", "bridge": "br-sfc",
                "agentSocket": str(sock), "ipam": {"type": "dpf-ipam", "poolName": "bench"}}, f"{bindir}:/usr/lib/cni"),
            *([Plugin(f"dpf-sfc-cni, baseline agent ({args.baseline})", bindir / "dpf-sfc-cni", {
                "cniVersion": "1.0.0", "name": "sfcbase", "type": "dpf-sfc-cni", "bridge": "br-base",
                "agentSocket": str(base_sock), "ipam": {"type": "dpf-ipam", "poolName": "bench"}},
                f"{bindir}:/usr/lib/cni")] if args.baseline else []),
            Plugin("bridge + host-local (Debian 1.1.1)", Path("/usr/lib/cni/bridge"), {
                "cniVersion": "1.0.0", "name": "br", "type": "bridge", "bridge": "cnibench0",
                "ipam": host_local(work / "hl-br", "10.82.0.0/16")},
                "/usr/lib/cni"),
            # Not a plugin: our shim against an agent that answers at once, the floor under our rows.
            Plugin("dpf-sfc-cni shim floor (agent answers at once)", bindir / "dpf-sfc-cni", {
                "cniVersion": "1.0.0", "name": "floor", "type": "dpf-sfc-cni", "bridge": "br-sfc",
                "agentSocket": str(work / "null" / "agent.sock"), "ipam": {"type": "dpf-ipam", "poolName": "x"}},
                f"{bindir}:/usr/lib/cni"),
        ]
        if args.ours_only:
            plugins = [p for p in plugins if p.conf["type"] == "dpf-sfc-cni"]
        null_agent(work / "null" / "agent.sock")
        switch_pids = tuple(c.pid for c in switch.children.values())
        for i, p in enumerate(plugins):
            p.ifname = f"net{i + 1}"
            if p.conf["name"] == "sfc":
                p.agent_pids, p.switch_pids = (agents[0].pid,), switch_pids
            elif p.conf["name"] == "sfcbase":
                p.agent_pids, p.switch_pids = (agents[1].pid,), tuple(c.pid for c in base_switch.children.values())
        for p in plugins:
            p.call("ADD", "warmup", pods[0])
            p.call("DEL", "warmup", pods[0])
        sequential(plugins, pods)
        concurrent(plugins, pods, args.concurrency)
        text = table(plugins)
        print(text)
        print()
        print(cpu_table(plugins))
        if args.record:
            record(text, args, load)
        return 0
    finally:
        for agent in reversed(agents):
            agent.stop()
        switch.stop()
        if base_switch:
            base_switch.stop()
        bed.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
