"""Faults under a 20/s ping through the live chain (the fast subset of `bench/reliability/faults.py`).

What a user must see: killing the DPU agent, the controller or ovsdb-server loses no packet and leaves the
chain's flows as they were (and no `ovs-ofctl` of the killed agent behind; a restarted controller keeps the last
known status, so Ready does not flap); with ovs-vswitchd killed, Ready goes False within about 2 s and comes back
once it is restarted, with the same flows; a newcomer that wants what the running chain holds (labels matching its
selector, its netdev, its uplink), named to sort first, never disturbs it: no packet lost, the chain and the holder
stay Ready, and the newcomer's conditions name the holder.

The cases of one test share a bed (one bed each would triple the suite's time on 2 cores); each case is measured
on its own and every case's line is in the failure message.
"""

from __future__ import annotations

from tests.reliability import faultcases
from tests.reliability.faultcases import FaultResult
from tests.reliability.livebed import Live

VSWITCHD_REPORT_WITHIN = 2.0 + 1.5  # the agent reports within 2 s; the margin is the status write and our 0.1 s poll


def _process_problems(result: FaultResult) -> list[str]:
    problems = []
    if result.packets_lost:
        problems.append("packets lost")
    if not result.flows_equal:
        problems.append("flows differ from before")
    if result.ready_again_after is None:
        problems.append("Ready did not come back")
    if result.orphans:
        problems.append("ovs-ofctl orphaned")
    if result.case == "SIGKILL controller" and result.not_ready:
        problems.append("Ready flapped across the controller restart")
    return problems


def test_killing_the_agent_the_controller_or_ovsdb_loses_no_packet(live: Live) -> None:
    results = [faultcases.PROCESS_FAULTS[p](live) for p in ("agent", "controller", "ovsdb-server")]
    lines = "\n".join(r.line() for r in results)
    print(f"\n{lines}")
    assert {r.case: _process_problems(r) for r in results} == {r.case: [] for r in results}, lines


def test_vswitchd_down_is_reported_and_repaired(live: Live) -> None:
    result = faultcases.kill_vswitchd(live, down=5.0)
    print(f"\n{result.line()}")
    assert result.ready_false_after is not None, f"Ready stayed True with vswitchd down: {result.line()}"
    assert result.ready_false_after <= VSWITCHD_REPORT_WITHIN, result.line()
    assert result.ready_again_after is not None, result.line()
    assert result.flows_equal, result.line()


def _conflict_problems(result: FaultResult) -> list[str]:
    return [what for what, bad in (("packets lost", result.packets_lost), ("chain left Ready", result.not_ready),
                                   ("holder left Ready", result.holder_not_ready),
                                   ("flows differ from before", not result.flows_equal),
                                   ("newcomer does not name the holder", not result.newcomer_names_holder)) if bad]


def test_a_newcomer_never_disturbs_the_running_chain(live: Live) -> None:
    results = [faultcases.conflict(live, case) for case in faultcases.CONFLICTS]
    lines = "\n".join(r.line() for r in results)
    print(f"\n{lines}")
    assert {r.case: _conflict_problems(r) for r in results} == {r.case: [] for r in results}, lines
