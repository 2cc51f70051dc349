"""bench/chains: the SFC programmer at 1,000 chains / 10,000 flows, against `ovs-ofctl --bundle replace-flows`.

Run as root from the repository root:  .venv/bin/python bench/chains/run.py [--chains 1000] [--reps 5]

Layout (one OVS in its own netns, userspace datapath, as in the test bed):
- 400 veth ports created by the programmer as `physical` interfaces (the realistic netdev load);
- the remaining chain ports are `service` interfaces whose OVS ports are pre-created the way the CNI
  would (upstream dpf-id in external_ids), as netdev-less patch ports: upstream's flow shape gives every
  (chain, port) its own priority-20 `in_port` flow, so 10,000 flows need 10,000 distinct ports;
- each chain has 5 two-port switches: 10 flows per chain, each with one `learn`.

Measured, in the same run:
1. full programming: a fresh programmer's first resync on the bridge whose flow table was emptied
   (ports present), against `ovs-ofctl -O OpenFlow13 --bundle replace-flows` of the same flow text
   on the same emptied table; reps alternate, medians reported;
2. one-chain update: swap one port of one chain (and back), add a chain, delete it: wall time of
   `update(state).result()`, flow mods sent, chains touched, and a check that no other flow changed;
   alternating (in pairs) between the persistent OpenFlow connection (the default) and one
   `ovs-ofctl` process per bundle (what the connection replaced), `--updates` of each.

`--baseline PYTHON` (another tree's Python, or a script putting its `dpf` first on PYTHONPATH) makes step 1
an A/B of two trees on the same switch and the same emptied table: each rep runs replace-flows, then this
tree's programmer and the baseline's, each in a fresh process (`FULL_CHILD`: connect, first resync, stop),
in alternating order (ABBA), so a process's first plan (nothing interned or cached yet) is part of both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dpf.agent.sfc.desired import chain_cookie  # noqa: E402
from dpf.agent.sfc.model import (  # noqa: E402
    InterfaceType,
    NodeState,
    Physical,
    Service,
    ServiceChain,
    ServiceInterface,
    Switch,
)
from dpf.agent.sfc.programmer import SfcProgrammer  # noqa: E402
from dpf.agent.sfc.settings import SfcSettings  # noqa: E402
from dpf.lab.bed.netns import NetnsBed, reap_stale  # noqa: E402
from dpf.lab.bed.ovs import OvsSwitch  # noqa: E402
from dpf.lab.bed.process import exit_on_sigterm  # noqa: E402

NS = "bench"
SPARES = 4  # service interfaces in no chain, for the one-chain updates


def make_veths(ovs: OvsSwitch, count: int) -> None:
    lines = []
    for i in range(count):
        lines += [f"link add up{i} type veth peer name upx{i}", f"link set up{i} up", f"link set upx{i} up"]
    subprocess.run(["ip", "-n", ovs.netns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def make_service_ports(ovs: OvsSwitch, count: int, batch: int = 1000) -> None:
    """What the CNI does at pod ADD, in bulk: a port tagged with upstream's dpf-id (patch: no netdev needed)."""
    for start in range(0, count, batch):
        args: list[str] = []
        for i in range(start, min(count, start + batch)):
            args += ["--", "add-port", "br-sfc", f"s{i}", "--", "set", "interface", f"s{i}", "type=patch",
                     f"options:peer=s{i}x", f"external_ids:dpf-id={NS}/pod-{i}/eth1"]
        ovs.vsctl(*args, timeout=600)


def node_state(chains: int, switches: int, physical: int, service: int, swap: int | None = None,
               extra_chain: bool = False) -> NodeState:
    phys = [ServiceInterface(NS, f"up{i}", InterfaceType.PHYSICAL, physical=Physical(f"up{i}"))
            for i in range(physical)]
    svc = [ServiceInterface(NS, f"svc{i}", InterfaceType.SERVICE,
                            service=Service("bench", "mybrsfc", "eth1", pod=f"{NS}/pod-{i}"))
           for i in range(service)]
    slots = chains * switches * 2
    # Spread the uplinks over the chains: every (slots/physical)-th slot is a physical port.
    every = max(1, slots // physical)
    names, p, s = [], 0, 0
    for k in range(slots):
        if k % every == 0 and p < physical:
            names.append(f"up{p}")
            p += 1
        else:
            names.append(f"svc{s}")
            s += 1
    out = []
    for c in range(chains):
        base = c * switches * 2
        sw = [Switch((names[base + 2 * j], names[base + 2 * j + 1])) for j in range(switches)]
        if swap is not None and c == chains // 2:
            sw[0] = Switch((sw[0].ports[0], f"svc{swap}"))
        out.append(ServiceChain(NS, f"c{c:04d}", tuple(sw)))
    if extra_chain:
        spare = service - SPARES
        out.append(ServiceChain(NS, "extra", (Switch((f"svc{spare + 2}", f"svc{spare + 3}")),)))
    return NodeState(tuple(phys + svc), tuple(out))


def ofctl(ovs: OvsSwitch, *args: str) -> float:
    started = time.monotonic()
    ovs.ofctl(*args, timeout=600)
    return time.monotonic() - started


def base_flow_text(ovs: OvsSwitch) -> list[str]:
    return sorted(f for f in ovs.flows("br-sfc") if "idle_timeout=" not in f.split(" actions=")[0])


TRANSPORTS = ("openflow", "ovs-ofctl")


def one_chain_updates(programmer: SfcProgrammer, ovs: OvsSwitch, args: argparse.Namespace, service: int,
                      state: NodeState) -> dict[str, dict[str, object]]:
    """Swap one port of one chain (and back) `args.updates` times per transport, then add a chain and delete it.

    Transports alternate in pairs (a swap and its undo): bundles over the persistent OpenFlow connection,
    then through one ovs-ofctl process each (the programmer's Ofctl with `connection_max_mods=0`), so both
    see the same machine load on this shared 2-core box.
    """
    limits = {"openflow": programmer.settings.connection_max_mods, "ovs-ofctl": 0}

    def use(transport: str) -> None:
        programmer.ofctl.settings = replace(programmer.settings, connection_max_mods=limits[transport])

    def timed(target: NodeState) -> tuple[float, object]:
        time.sleep(0.1)  # let the previous pass's echo (monitor events, IDL updates) drain
        started = time.monotonic()
        report = programmer.update(target).result(60)
        return time.monotonic() - started, report

    bundles_before = dict(programmer.ofctl.bundles)
    target = chain_cookie(NS, f"c{args.chains // 2:04d}")
    spare = service - SPARES
    states = [node_state(args.chains, args.switches, args.physical, service, swap=spare), state]
    before = {f for f in base_flow_text(ovs) if not f.startswith(f"cookie={target:#x},")}
    runs = {t: {"timings": [], "mods": set(), "touched": set(), "phases": []} for t in TRANSPORTS}
    for i in range(2 * args.updates):
        transport = TRANSPORTS[(i // 2) % 2]
        use(transport)
        seconds, report = timed(states[i % 2])
        runs[transport]["timings"].append(seconds)
        runs[transport]["mods"].add(report.flow_mods)
        runs[transport]["touched"].update(report.chains)
        runs[transport]["phases"].append(dict(report.phases))
    after = {f for f in base_flow_text(ovs) if not f.startswith(f"cookie={target:#x},")}
    assert after == before, "a one-chain update changed another chain's flows"
    extra = node_state(args.chains, args.switches, args.physical, service, extra_chain=True)
    for transport in TRANSPORTS:
        use(transport)
        runs[transport]["add"] = timed(extra)
        runs[transport]["delete"] = timed(state)
    use("openflow")
    sent = {k: v - bundles_before[k] for k, v in programmer.ofctl.bundles.items()}
    out = {}
    for transport, run in runs.items():
        timings = sorted(run["timings"])
        (add_s, add), (delete_s, delete) = run["add"], run["delete"]
        out[transport] = {
            "swap_port_median_ms": round(statistics.median(timings) * 1000, 1),
            "swap_port_p90_ms": round(timings[int(0.9 * (len(timings) - 1))] * 1000, 1),
            "flow_mods_per_swap": sorted(run["mods"]), "chains_touched": sorted(run["touched"]),
            "other_flows_unchanged": True,
            "add_chain_ms": round(add_s * 1000, 1), "add_chain_mods": add.flow_mods,
            "add_chain_phases_ms": {k: round(v * 1000, 1) for k, v in add.phases},
            "delete_chain_ms": round(delete_s * 1000, 1), "delete_chain_mods": delete.flow_mods,
            "delete_chain_phases_ms": {k: round(v * 1000, 1) for k, v in delete.phases},
            "swap_phases_median_ms": {k: round(statistics.median(p[k] for p in run["phases"]) * 1000, 1)
                                      for k in run["phases"][0]},
            "bundles": sent[transport],
        }
    return out


FULL_CHILD = r"""
import json, sys, time
from pathlib import Path
from dpf.agent.sfc.programmer import SfcProgrammer  # the tree's own dpf, before run.py puts a checkout on sys.path
from dpf.agent.sfc.settings import SfcSettings
sys.path.insert(0, sys.argv[1])
import run
chains, switches, physical, service = map(int, sys.argv[2:6])
settings = SfcSettings(ovs_rundir=Path(sys.argv[6]), port_type="system", realize_timeout=300,
                       ovsdb_txn_timeout=300, ofctl_timeout=300, ovsdb_connect_timeout=120)
programmer = SfcProgrammer(settings, run.node_state(chains, switches, physical, service))
started = time.monotonic()
report = programmer.start(timeout=600)
wall = time.monotonic() - started
programmer.stop()
print(json.dumps({"seconds": report.seconds, "wall": wall, "phases": dict(report.phases),
                  "module": sys.modules["dpf.agent.sfc.programmer"].__file__}))
"""


def full_in_child(python: str, tree_bench: Path, args: argparse.Namespace, service: int, rundir: Path) -> dict:
    """One full programming by `python`'s tree in a fresh process (see FULL_CHILD)."""
    out = subprocess.run([python, "-c", FULL_CHILD, str(tree_bench), str(args.chains), str(args.switches),
                          str(args.physical), str(service), str(rundir)], capture_output=True, text=True,
                         timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{python}: full programming failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def full_ab(ovs: OvsSwitch, flows: list[str], flow_file: Path, args: argparse.Namespace, service: int) -> dict:
    """Step 1 as an A/B of this tree and `args.baseline`, fresh processes, ABBA order within reps."""
    base_bench = Path(subprocess.run([str(args.baseline), "-c", "import dpf.agent.sfc.programmer as p, pathlib; "
                                      "print(pathlib.Path(p.__file__).resolve().parents[2])"],
                                     capture_output=True, text=True, check=True).stdout.strip()) / "bench" / "chains"
    if base_bench.resolve().is_relative_to(REPO):
        raise SystemExit(f"--baseline {args.baseline} imports this checkout: give it another tree's Python "
                         "(PYTHONSAFEPATH=1 keeps the working directory out)")
    trees = {"ours": (sys.executable, REPO / "bench" / "chains"), "baseline": (str(args.baseline), base_bench)}
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    theirs = []
    for rep in range(args.reps):
        ofctl(ovs, "del-flows", "br-sfc")
        theirs.append(ofctl(ovs, "--bundle", "replace-flows", "br-sfc", str(flow_file)))
        for name in (("ours", "baseline") if rep % 2 == 0 else ("baseline", "ours")):
            ofctl(ovs, "del-flows", "br-sfc")
            python, bench_dir = trees[name]
            runs[name].append(full_in_child(python, bench_dir, args, service, ovs.rundir))
            assert base_flow_text(ovs) == flows, f"{name}: flows differ from the first start's"
    result: dict[str, object] = {"replace_flows_s": [round(x, 3) for x in theirs],
                                 "replace_flows_median_s": round(statistics.median(theirs), 3)}
    for name, reps in runs.items():
        seconds = [r["seconds"] for r in reps]
        result[name] = {"module": reps[0]["module"], "seconds": [round(x, 3) for x in seconds],
                        "wall_s": [round(r["wall"], 3) for r in reps],
                        "median_s": round(statistics.median(seconds), 3),
                        "ratio_to_replace_flows": round(statistics.median(seconds) / statistics.median(theirs), 2),
                        "phases_median_s": {k: round(statistics.median(r["phases"][k] for r in reps), 3)
                                            for k in reps[0]["phases"]}}
    result["ours_over_baseline_per_rep"] = [round(a["seconds"] / b["seconds"], 2)
                                            for a, b in zip(runs["ours"], runs["baseline"], strict=True)]
    return result


def main() -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--switches", type=int, default=5, help="two-port switches per chain")
    parser.add_argument("--physical", type=int, default=400, help="veth ports created by the programmer")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--baseline", type=Path, help="Python of another tree: full programming as an A/B")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, OVS)", file=sys.stderr)
        return 2

    service = args.chains * args.switches * 2 - args.physical + SPARES
    work = Path(tempfile.mkdtemp(prefix="dpf-bench-chains-"))
    exit_on_sigterm()
    reap_stale("b")  # namespaces of an earlier run that was SIGKILLed (its finally never ran)
    bed = NetnsBed(owner="b")
    ovs = OvsSwitch(netns=bed.namespace("ovs"), rundir=work / "ovs")
    results: dict[str, object] = {"chains": args.chains, "flows": args.chains * args.switches * 2,
                                  "physical_ports": args.physical, "service_ports": service}
    programmer: SfcProgrammer | None = None
    try:
        ovs.start()
        ovs.add_bridge("br-sfc")
        t = time.monotonic()
        make_veths(ovs, args.physical)
        make_service_ports(ovs, service)
        results["setup_ports_s"] = round(time.monotonic() - t, 2)
        settings = SfcSettings(ovs_rundir=ovs.rundir, port_type="system", realize_timeout=300,
                               ovsdb_txn_timeout=300, ofctl_timeout=300, ovsdb_connect_timeout=120)
        state = node_state(args.chains, args.switches, args.physical, service)

        # First start: creates the 400 physical ports (one transaction) and every flow.
        programmer = SfcProgrammer(settings, state)
        t = time.monotonic()
        first = programmer.start(timeout=600)
        results["first_start"] = {"wall_s": round(time.monotonic() - t, 3), "resync_s": round(first.seconds, 3),
                                  "phases": {k: round(v, 3) for k, v in first.phases}, "ports": first.ports[:60]}
        flows = base_flow_text(ovs)
        pending = [st for st in programmer.statuses().values() if not st.ready]
        assert not pending, pending[:3]
        assert len(flows) == results["flows"], f"expected {results['flows']} flows, found {len(flows)}"
        flow_file = work / "flows.txt"
        flow_file.write_text("\n".join(flows) + "\n")

        if args.baseline:
            programmer.stop()
            programmer = None
            results["full_ab"] = full_ab(ovs, flows, flow_file, args, service)
            print(json.dumps(results, indent=2))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
            return 0

        # 1. Full programming vs replace-flows, alternating on an emptied table.
        ours, theirs, phases = [], [], []
        for _ in range(args.reps):
            programmer.stop()
            ofctl(ovs, "del-flows", "br-sfc")
            theirs.append(ofctl(ovs, "--bundle", "replace-flows", "br-sfc", str(flow_file)))
            ofctl(ovs, "del-flows", "br-sfc")
            programmer = SfcProgrammer(settings, state)
            report = programmer.start(timeout=600)
            ours.append(report.seconds)
            phases.append(dict(report.phases))
            assert base_flow_text(ovs) == flows
        results["full"] = {
            "ours_s": [round(x, 3) for x in ours], "replace_flows_s": [round(x, 3) for x in theirs],
            "ours_median_s": round(statistics.median(ours), 3),
            "replace_flows_median_s": round(statistics.median(theirs), 3),
            "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
            "phases_median_s": {k: round(statistics.median(p[k] for p in phases), 3) for k in phases[0]},
        }

        # 2. One-chain updates: over the persistent OpenFlow connection, and one ovs-ofctl process per bundle.
        one_chain = one_chain_updates(programmer, ovs, args, service, state)
        results["one_chain"] = one_chain["openflow"]
        results["one_chain_via_ovs_ofctl"] = one_chain["ovs-ofctl"]
        results["one_chain"]["speedup_vs_ovs_ofctl"] = round(
            one_chain["ovs-ofctl"]["swap_port_median_ms"] / one_chain["openflow"]["swap_port_median_ms"], 2)
    finally:
        if programmer:
            programmer.stop()
        ovs.stop()
        bed.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
