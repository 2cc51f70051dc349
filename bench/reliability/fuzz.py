"""bench/reliability/fuzz: mutations of upstream's and the lab's SFC objects plus create/delete churn, against a
live chain with a 20/s ping through it; prints a summary (see `tests/reliability/fuzzing.py` for what is judged).

Run as root from the repository root:
    .venv/bin/python bench/reliability/fuzz.py [--mutations 520] [--seed 1] [--churn 200]
Exits 1 if anything was judged wrong (the summary says what).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bed import live_bed

from tests.reliability.fuzzing import FuzzRun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=520, help="mutated objects to create (default 520)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed, the same mutations")
    parser.add_argument("--churn", type=int, default=200, help="create/delete cycles of the same names (default 200)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds a batch gets to settle (refused, named or Ready) before it is judged")
    parser.add_argument("--gone", type=float, default=30.0,
                        help="seconds deleted objects (and, at the end, every leftover) get to be gone")
    parser.add_argument("--workdir", type=Path, help="keep the bed's files (logs) here instead of a temp dir")
    args = parser.parse_args()
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    with live_bed(args.workdir) as live:
        say(f"live chain hbn-to-fabric Ready on {live.a}; fuzzing")
        report = FuzzRun(live, say, settle=args.settle, gone=args.gone).run(args.mutations, args.seed, args.churn)
    print(report.summary())
    ok = not (any(o.failed for o in report.outcomes) or report.canaries or report.churn_problems or report.leftovers
              or report.orphans or report.tracebacks or report.chain_not_ready
              or any(p.lost for p in report.ping.values()))
    print("result:", "OK" if ok else "PROBLEMS (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
