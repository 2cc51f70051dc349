"""bench/cni/ports_ab.py: the OVS port step of CNI ADD/DEL alone, A/B between trees, on one real switch.

    .venv/bin/python bench/cni/ports_ab.py new=.venv/bin/python old=/path/to/other/python [--rounds 10 --width 20]

No shim, veth, IPAM or netlink: each tree's `OvsPorts` (agent/cni/ovs_ports.py) in a process of its own
adds `width` internal ports at once and waits for their ofports (what ADD waits for), then deletes them,
`rounds` times. The trees take turns round by round (A B A B ...), each on a bridge of its own on one switch,
so load swings hit both alike. Prints per tree the ADD/DEL latency percentiles (ms, every port of every
round) and the CPU time of its process per port (user + system, all threads). Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CHILD = r"""
import asyncio, inspect, json, os, sys, time
from dpf.agent.cni.ovs_ports import OvsPorts, PortSpec
remote, bridge, tag = sys.argv[1], sys.argv[2], sys.argv[3]

def cpu():
    t = os.times()
    return t.user + t.system

async def main():
    ports = (OvsPorts.standalone(remote) if hasattr(OvsPorts, "standalone") else OvsPorts(remote))
    await ports.start()
    print(json.dumps({"ready": sys.modules["dpf.agent.cni.ovs_ports"].__file__}), flush=True)
    for line in sys.stdin:
        width = int(line)
        names = [f"{tag}{i}" for i in range(width)]
        c0 = cpu()
        async def timed(coro):
            t = time.perf_counter()
            await coro
            return time.perf_counter() - t
        adds = await asyncio.gather(*(timed(ports.add(PortSpec(bridge=bridge, name=n, iface_type="internal")))
                                      for n in names))
        c1 = cpu()
        dels = await asyncio.gather(*(timed(ports.delete(n)) for n in names))
        c2 = cpu()
        print(json.dumps({"add": adds, "del": dels, "add_cpu": c1 - c0, "del_cpu": c2 - c1}), flush=True)
    await ports.stop()

asyncio.run(main())
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="NAME=PYTHON")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--width", type=int, default=20)
    args = parser.parse_args()
    from dpf.lab.bed.netns import NetnsBed
    from dpf.lab.bed.ovs import OvsSwitch
    from dpf.lab.bed.process import exit_on_sigterm

    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="dpf-bench-ports-"))
    bed = NetnsBed(owner="bp")
    switch = OvsSwitch(netns=bed.namespace("ovs"), rundir=work / "ovs")
    children: dict[str, subprocess.Popen] = {}
    try:
        switch.start()
        for i, tree in enumerate(args.trees):
            name, _, python = tree.partition("=")
            switch.add_bridge(f"br-{name}")
            children[name] = subprocess.Popen([python, "-c", CHILD, f"unix:{switch.db_sock}", f"br-{name}",
                                               f"p{i}x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            print(f"{name}: {json.loads(children[name].stdout.readline())['ready']}")
        results = {name: {"add": [], "del": [], "add_cpu": 0.0, "del_cpu": 0.0} for name in children}
        for _ in range(args.rounds):
            for name, child in children.items():
                child.stdin.write(f"{args.width}\n")
                child.stdin.flush()
                got = json.loads(child.stdout.readline())
                for key in ("add", "del"):
                    results[name][key] += got[key]
                    results[name][f"{key}_cpu"] += got[f"{key}_cpu"]
        n = args.rounds * args.width
        print(f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.width} at once per tree")
        print("| tree | ADD p50 | ADD p99 | DEL p50 | DEL p99 | CPU per ADD | CPU per DEL |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {pct(r['add'], .5):.1f} ms | {pct(r['add'], .99):.1f} ms | "
                  f"{pct(r['del'], .5):.1f} ms | {pct(r['del'], .99):.1f} ms | "
                  f"{r['add_cpu'] / n * 1000:.2f} ms | {r['del_cpu'] / n * 1000:.2f} ms |")
        print(json.dumps({name: {"add_mean_ms": statistics.mean(r["add"]) * 1000} for name, r in results.items()}))
        return 0
    finally:
        for child in children.values():
            if child.stdin:
                child.stdin.close()
            child.wait(20)
        switch.stop()
        bed.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
