"""bench/chains/plan_ab.py: alternate plan.py's planning between trees, a fresh process per tree and round.

Each TREE is a directory holding `bench/chains/plan.py` and a `dpf` package that imports that tree's code (this
checkout; or, for another commit, a `dpf/` with its `__init__.py` and symlinks agent, shared, ... to a worktree's
folders, plan.py copied beside it). Per round and tree it prints the median of `--reps` plans of 1,000 chains,
the first of them (a fresh process: nothing interned yet) and the median diff + bundle text, in seconds.

Run from anywhere:  .venv/bin/python bench/chains/plan_ab.py old=/tmp/pkg-old new=. [--rounds 5 --reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/bench/chains"); sys.path.insert(0, sys.argv[1])
import plan
import dpf.agent.sfc.desired as desired
assert desired.__file__.startswith(sys.argv[1]), desired.__file__  # the tree's code, not the installed one
print(json.dumps([plan.once(1000, 5) for _ in range(int(sys.argv[2]))]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="name=directory")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    trees = {name: str(Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.trees)}
    for round_ in range(1, args.rounds + 1):
        cells = []
        for name, path in trees.items():
            out = subprocess.run([sys.executable, "-c", CHILD, path, str(args.reps)], capture_output=True, text=True,
                                 check=True, cwd="/tmp").stdout
            runs = json.loads(out)
            plans = [r[0] for r in runs]
            cells.append(f"{name} plan {statistics.median(plans):.3f} (first {plans[0]:.3f}) "
                         f"diff+text {statistics.median(r[1] for r in runs):.3f}")
        print(f"round {round_}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
