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
    report = FuzzRun(live, settle=15.0, gone=20.0).run(MUTATIONS, SEED, CHURN_CYCLES)
    summary = report.summary()
    print("\n" + summary)
    failed = [o.line() for o in report.outcomes if o.failed]
    assert len(report.outcomes) == MUTATIONS
    assert failed == [], summary
    assert report.canaries == [], summary
    assert report.churn_problems == [], summary
    assert all(not p.lost for p in report.ping.values()), summary
    assert report.chain_not_ready == [], summary
    assert report.leftovers == [], summary
    assert report.orphans == [], summary
    assert report.tracebacks == {}, summary
