"""bench/reliability/faults: faults under a 20/s ping through a live chain. SIGKILL of the DPU agent, the
controller, ovs-vswitchd and ovsdb-server (each restarted after a pause, as a supervisor would), and newcomers that
want what the running chain holds (labels matching its selector, its netdev p0, its uplink p1), each named to sort
before the holder. Per case: packets lost, time until Ready is true again, whether flows equal the state before.

Run as root from the repository root:
    .venv/bin/python bench/reliability/faults.py [--rounds 1] [--vswitchd-down 5] [--only agent,controller,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bed import live_bed

from tests.reliability import faultcases

CASES = [*faultcases.PROCESS_FAULTS, *(f"newcomer-{c}" for c in faultcases.CONFLICTS)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="times each case runs (default 1)")
    parser.add_argument("--vswitchd-down", type=float, default=5.0, help="seconds ovs-vswitchd stays down")
    parser.add_argument("--only", default=",".join(CASES),
                        help=f"comma-separated cases (default all: {','.join(CASES)})")
    parser.add_argument("--workdir", type=Path, help="keep the bed's files (logs) here instead of a temp dir")
    args = parser.parse_args()
    chosen = [c for c in args.only.split(",") if c]
    unknown = set(chosen) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; known: {CASES}")
    started = time.monotonic()
    results = []
    with live_bed(args.workdir) as live:
        print(f"[{time.monotonic() - started:6.1f}s] live chain hbn-to-fabric Ready on {live.a}", flush=True)
        for round_ in range(args.rounds):
            for case in chosen:
                if case == "ovs-vswitchd":
                    result = faultcases.kill_vswitchd(live, down=args.vswitchd_down)
                elif case in faultcases.PROCESS_FAULTS:
                    result = faultcases.PROCESS_FAULTS[case](live)
                else:
                    result = faultcases.conflict(live, case.removeprefix("newcomer-"))
                results.append(result)
                print(f"[{time.monotonic() - started:6.1f}s] round {round_ + 1}: {result.line()}", flush=True)
    print("\n| case | packets lost | Ready went False after | Ready True again after | flows equal before |")
    print("|---|---|---|---|---|")
    for r in results:
        false = "stayed True" if r.ready_false_after is None else f"{r.ready_false_after:.1f} s"
        again = "-" if r.ready_false_after is None else (
            "never" if r.ready_again_after is None else f"{r.ready_again_after:.1f} s")
        print(f"| {r.case} | {r.packets_lost} | {false} | {again} | {'yes' if r.flows_equal else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
