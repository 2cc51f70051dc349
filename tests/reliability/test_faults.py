"""Faults under a 20/s ping through the live chain (the fast subset of `bench/reliability/faults.py`).

What a user must see: killing the DPU agent, the controller or ovsdb-server loses no packet, and leaves the
chain's flows as they were (and no `ovs-ofctl` of the killed agent behind); with ovs-vswitchd killed, Ready goes
False within about 2 s and comes back once it is restarted, with the same flows; a newcomer that wants what the
running chain holds (labels matching its selector, its netdev, its uplink), named to sort first, never disturbs it:
no packet lost, the holder stays Ready, and the newcomer's conditions name the holder.
"""

from __future__ import annotations

import pytest

from tests.reliability import faultcases
from tests.reliability.livebed import Live

VSWITCHD_REPORT_WITHIN = 2.0 + 1.5  # the agent reports within 2 s; the margin is the status write and our 0.1 s poll


@pytest.mark.parametrize("process", ["agent", "controller", "ovsdb-server"])
def test_killing_a_process_loses_no_packet(live: Live, process: str) -> None:
    result = faultcases.PROCESS_FAULTS[process](live)
    print(f"\n{result.line()}")
    assert result.packets_lost == 0, result.line()
    assert result.flows_equal, result.line()
    assert result.ready_again_after is not None, result.line()
    assert result.orphans == [], result.line()
    if process == "controller":  # a restarted controller keeps the last known status: nothing flaps
        assert result.not_ready == [], result.line()


def test_vswitchd_down_is_reported_and_repaired(live: Live) -> None:
    result = faultcases.kill_vswitchd(live, down=5.0)
    print(f"\n{result.line()}")
    assert result.ready_false_after is not None, f"Ready stayed True with vswitchd down: {result.line()}"
    assert result.ready_false_after <= VSWITCHD_REPORT_WITHIN, result.line()
    assert result.ready_again_after is not None, result.line()
    assert result.flows_equal, result.line()


@pytest.mark.parametrize("case", faultcases.CONFLICTS)
def test_a_newcomer_never_disturbs_the_running_chain(live: Live, case: str) -> None:
    result = faultcases.conflict(live, case)
    print(f"\n{result.line()}")
    assert result.packets_lost == 0, result.line()
    assert result.not_ready == [], result.line()
    assert result.holder_not_ready == [], result.line()
    assert result.flows_equal, result.line()
    assert result.newcomer_names_holder, result.line()
