"""The shared condition/phase helper, table-tested: the summary rules of upstream's condition model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dpf.controller.api import DPU_PHASES, DPUDeployment, conditions
from dpf.controller.api.meta import Condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def cond(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message,  # type: ignore[arg-type]
                     last_transition_time=T0)


def test_ensure_seeds_declared_types_as_unknown_pending_and_keeps_existing() -> None:
    existing = [cond("PrerequisitesReady", "True", "Success")]
    out = conditions.ensure(existing, DPUDeployment.CONDITION_TYPES, now=T1, generation=3)
    assert [c.type for c in out] == ["PrerequisitesReady", *(t for t in DPUDeployment.CONDITION_TYPES
                                                             if t != "PrerequisitesReady")]
    assert out[0] == existing[0]
    assert {(c.status, c.reason, c.observed_generation) for c in out[1:]} == {("Unknown", "Pending", 3)}
    assert existing == [cond("PrerequisitesReady", "True", "Success")]  # input untouched


@pytest.mark.parametrize(("others", "status", "reason", "message"), [
    ([("A", "True", "Success"), ("B", "True", "Success")], "True", "Success", ""),
    ([("A", "True", "Success"), ("B", "False", "Pending")], "False", "Pending",
     "The following conditions are not ready: B"),
    ([("A", "False", "Failure"), ("B", "False", "Pending")], "False", "Failure",
     "The following conditions are not ready: A, B"),
    ([("A", "False", "Failure"), ("B", "False", "AwaitingDeletion")], "False", "AwaitingDeletion",
     "The following conditions are not ready: A, B"),
    # Error is unranked: a summary of only Error conditions says Pending (as upstream).
    ([("A", "False", "Error"), ("B", "True", "Success")], "False", "Pending",
     "The following conditions are not ready: A"),
    ([("A", "False", "Error"), ("B", "False", "Failure")], "False", "Failure",
     "The following conditions are not ready: A, B"),
    ([("A", "Unknown", "Pending")], "False", "Pending", "The following conditions are not ready: A"),
    ([], "True", "Success", ""),
])
def test_summary(others: list[tuple[str, str, str]], status: str, reason: str, message: str) -> None:
    before = [cond("Ready", "Unknown", "Pending"), *(cond(*o) for o in others)]
    ready = conditions.get(conditions.summarize(before, now=T1, generation=2), "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.message, ready.observed_generation) == (status, reason, message, 2)


def test_transition_time_moves_only_when_status_changes() -> None:
    start = [cond("A", "False", "Pending")]
    same = conditions.mark_false(start, "A", "Error", "still waiting", now=T1)
    assert conditions.get(same, "A").last_transition_time == T0  # type: ignore[union-attr]
    assert conditions.get(same, "A").message == "still waiting"  # type: ignore[union-attr]
    flipped = conditions.mark_true(same, "A", now=T1)
    assert conditions.get(flipped, "A").last_transition_time == T1  # type: ignore[union-attr]
    assert conditions.is_true(flipped, "A")
    assert not conditions.is_true(start, "A")
    assert not conditions.is_true(flipped, "Missing")


def test_provisioning_condition_reason_defaults_to_type() -> None:
    out = conditions.provisioning_condition(None, "DMSRunning", True, now=T0)
    assert (out[0].status, out[0].reason) == ("True", "DMSRunning")
    out = conditions.provisioning_condition(out, "DMSRunning", False, reason="DMSPodTimedout",
                                            message="pod not running after 5m", now=T1)
    assert (out[0].status, out[0].reason, out[0].message) == ("False", "DMSPodTimedout", "pod not running after 5m")


@pytest.mark.parametrize(("phases", "counts"), [
    ([], {}),
    (["Ready", "Ready", "OS Installing"], {"Ready": 2, "OS Installing": 1}),
    ([None, "", "Initializing"], {"Initializing": 3}),
    (["Node Effect", "Rebooting", "Error"], {"Error": 1}),
])
def test_phase_counts(phases: list[str | None], counts: dict[str, int]) -> None:
    assert conditions.phase_counts(phases) == counts


def test_dpu_phases_keep_their_spaces() -> None:
    assert "DMS Deployment" in DPU_PHASES
    assert "Host Network Configuration" in DPU_PHASES
    assert len(DPU_PHASES) == 11


def test_second_precision_timestamps() -> None:
    c = Condition(type="A", status="True", reason="Success", message="",
                  last_transition_time=datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC))
    assert c.to_json()["lastTransitionTime"] == "2026-01-01T10:00:00Z"
