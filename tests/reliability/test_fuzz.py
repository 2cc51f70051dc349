"""Bad input and churn against a live chain (the fast, seeded subset of `bench/reliability/fuzz.py`).

Mutations of upstream's examples and of the lab's SFC objects go through the real apiserver to the real
controller and DPU agents, with a 20/s ping through the live chain `hbn-to-fabric` the whole time, then the
same names are created and deleted in quick succession. What a user must see afterwards: every refusal is a
422 naming the field; every accepted bad object says on its own conditions which field is wrong (and is not
Ready); a valid object goes Ready beside bad ones; everything deleted is gone, down to flows, bridge records
and ports; no process left behind, no traceback in any log; and the live chain never lost a packet.
"""

from __future__ import annotations

from tests.reliability.fuzzing import FuzzRun
from tests.reliability.livebed import Live

SEED = 12
MUTATIONS = 48  # two batches of one mutation per base
CHURN_CYCLES = 6


def test_bad_input_and_churn_leave_the_live_chain_and_nothing_else(live: Live) -> None:
    report = FuzzRun(live, settle=12.0, gone=15.0).run(MUTATIONS, SEED, CHURN_CYCLES)
    summary = report.summary()
    print("\n" + summary)
    assert len(report.outcomes) == MUTATIONS
    # Every property at once, so one run shows all that is wrong (the summary has the details).
    broken = [what for what, bad in (
        ("a mutation was refused without a 422 naming its field, or accepted without saying so",
         any(o.failed for o in report.outcomes)),
        ("a valid canary stayed Pending beside bad objects, or a deleted object stayed", report.canaries),
        ("create/delete churn left something", report.churn_problems),
        ("the live chain lost packets", any(p.lost for p in report.ping.values())),
        ("the live chain left Ready", report.chain_not_ready),
        ("objects, flows, bridge records or ports outlived their owners", report.leftovers),
        ("ovs-ofctl processes were orphaned", report.orphans),
        ("tracebacks in the controller's or agents' logs", report.tracebacks)) if bad]
    assert broken == [], summary
