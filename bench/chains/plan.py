"""bench/chains/plan.py: the planning half of a full resync in isolation, no switch needed.

Plans 1,000 chains of 5 two-port switches (10,000 flows, bench/chains/run.py's shape) with
`desired.plan_chain`, then builds the full resync's flow mods from an empty table and renders the
`ovs-ofctl --bundle` text, with the cyclic collector paused as the programmer's resync has it (when the tree
has `gcpause`). Prints the median and range of `--reps` runs, in seconds.

Run from the repository root:  .venv/bin/python bench/chains/plan.py [--reps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dpf.agent.sfc.desired import Resolution, plan_chain, port_claims, resync_mods
from dpf.agent.sfc.model import ServiceChain, Switch

try:  # the programmer's full resync runs with the collector paused; trees before that have no pause
    from dpf.agent.sfc.gcpause import paused
except ImportError:
    paused = contextlib.nullcontext


def once(chains: int, switches: int) -> tuple[float, float]:
    planned, resolutions, port = [], {}, 1
    for c in range(chains):
        pairs = []
        for _ in range(switches):
            a, b = f"i{port}", f"i{port + 1}"
            resolutions[f"bench/{a}"], resolutions[f"bench/{b}"] = Resolution(port), Resolution(port + 1)
            port += 2
            pairs.append(Switch((a, b)))
        planned.append(ServiceChain("bench", f"c{c:04d}", tuple(pairs)))
    claims = port_claims(planned, resolutions)
    with paused():
        started = time.perf_counter()
        plans = [plan_chain(chain, resolutions, resolutions, claims) for chain in planned]
        planning = time.perf_counter() - started
        mods = resync_mods({plan.cookie: plan for plan in plans}, [], ())
        "".join(f"{mod if isinstance(mod, str) else mod.to_ofctl()}\n" for mod in mods)  # str: trees before flowspec
        return planning, time.perf_counter() - started - planning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--switches", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runs = [once(args.chains, args.switches) for _ in range(args.reps)]
    for name, values in (("plan", [r[0] for r in runs]), ("diff+text", [r[1] for r in runs])):
        print(f"{name}: median {statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
