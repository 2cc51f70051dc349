"""An agent whose working stream broke (a leader change) is back within a second of the new leader; an agent that
never got a stream keeps backing off exponentially, so a thousand of them do not hammer a dead controller."""

from __future__ import annotations

from pathlib import Path

import grpc

from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings


def _runtime(tmp_path: Path) -> AgentRuntime:
    settings = AgentSettings(node="n1", role="dpu", endpoints=("dpf-controller:5443",), state_dir=tmp_path,
                             insecure=True)
    return AgentRuntime(settings, [])


def _worst_delays(runtime: AgentRuntime, rounds: int, now: float) -> list[float]:
    """The largest delay drawn over many tries at each failed round (the delay is jittered)."""
    worst = []
    for failed_rounds in range(1, rounds + 1):
        runtime.state.failed_rounds = failed_rounds
        worst.append(max(runtime._delay(grpc.StatusCode.UNAVAILABLE, now) for _ in range(200)))
    return worst


def test_reconnects_stay_quick_through_a_failover_then_back_off(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    settings = runtime.settings
    never_connected = _worst_delays(runtime, 8, now=100.0)
    assert never_connected[-1] > 5.0, f"no stable stream ever: exponential back-off up to the max {never_connected}"

    runtime.state.stable_broke_at = 100.0
    during_failover = _worst_delays(runtime, 8, now=100.0 + settings.failover_window / 2)
    assert max(during_failover) <= settings.failover_backoff_max, during_failover

    after_window = _worst_delays(runtime, 8, now=100.0 + settings.failover_window + 1)
    assert after_window[-1] > 5.0, f"a controller down longer than a failover: back-off again {after_window}"


def test_configuration_errors_are_never_retried_quickly(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    runtime.state.stable_broke_at = 100.0
    delay = runtime._delay(grpc.StatusCode.PERMISSION_DENIED, 100.5)
    assert delay >= runtime.settings.backoff_max / 2, "a refused certificate is not a failover"
