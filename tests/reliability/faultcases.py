"""Faults under a 20/s ping through the live chain, shared by `tests/reliability/test_faults.py` and
`bench/reliability/faults.py`.

Process faults: SIGKILL of DPU a's agent, of the controller, of DPU a's ovs-vswitchd and of its ovsdb-server;
each is restarted the way a supervisor would (after `down` seconds) with the bed's own helpers. Conflicts: a
newcomer that wants what the running chain holds (an interface whose labels also match a chain port's
selector, a second interface on netdev p0, a second chain on p1), each named to sort before the holder.

Each case measures: packets lost per path, when Ready went False and came back (from the fault), whether the
chain's flows equal those before, and what the case's own expectation needs (the newcomer's conditions,
orphaned `ovs-ofctl` processes).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException

from dpf.lab import chains
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool
from tests.reliability import livebed
from tests.reliability.livebed import CHAIN, Live, PingResult, ReadyWatch

RECOVERY_TIMEOUT = 30.0


@dataclass
class FaultResult:
    case: str
    lost: dict[str, PingResult]
    ready_false_after: float | None
    """Seconds from the fault to the first sample of the chain's Ready not True (None: it never left True)."""
    ready_again_after: float | None
    """Seconds from the fault to Ready True again after having left it (0.0 if it never left)."""
    flows_equal: bool
    not_ready: list[tuple[float, str, str]] = field(default_factory=list)
    holder_not_ready: list[tuple[float, str, str]] = field(default_factory=list)
    newcomer_status: str = ""
    newcomer_names_holder: bool | None = None
    orphans: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def packets_lost(self) -> int:
        return sum(len(p.lost) for p in self.lost.values())

    def line(self) -> str:
        ready = ("stayed True" if self.ready_false_after is None else
                 f"False after {self.ready_false_after:.1f}s, True again after "
                 f"{'never' if self.ready_again_after is None else f'{self.ready_again_after:.1f}s'}")
        parts = [f"{self.case}: lost {self.packets_lost} "
                 f"({', '.join(f'{k} {v.summary()}' for k, v in self.lost.items())})",
                 f"Ready {ready}", f"flows equal before: {'yes' if self.flows_equal else 'NO'}"]
        if self.newcomer_names_holder is not None:
            parts.append(f"holder {'stayed Ready' if not self.holder_not_ready else 'left Ready'}, newcomer "
                         f"{'names' if self.newcomer_names_holder else 'does NOT name'} the holder "
                         f"({self.newcomer_status[:300]})")
        if self.orphans:
            parts.append(f"orphaned ovs-ofctl: {len(self.orphans)}")
        parts += self.notes
        return "; ".join(parts)


def _measure(live: Live, case: str, fault: Callable[[], None], settle: float = 4.0) -> FaultResult:
    """Run `fault` (which returns once the faulted part is running again) under the ping, then wait for the
    chain to be Ready for `settle` seconds on end, and measure."""
    before = live.chain_flows()
    pingers = live.pingers()
    watch = ReadyWatch(live.bed.host_reader, "dpuservicechains", live.ns, CHAIN)
    time.sleep(1.0)  # some pings and samples before the fault
    started = time.monotonic()
    notes: list[str] = []
    try:
        fault()
        if not _stays_ready(live, settle, RECOVERY_TIMEOUT):
            notes.append(f"the chain was not Ready for {settle:.0f}s on end within {RECOVERY_TIMEOUT:.0f}s")
    finally:
        watch.stop()
        lost = {k: p.stop() for k, p in pingers.items()}
    went_false = watch.first_not_true(started)
    back_after_false = None if went_false is None else watch.first("True", started + went_false)
    back = None if went_false is None or back_after_false is None else went_false + back_after_false
    return FaultResult(case, lost, went_false, 0.0 if went_false is None else back,
                       live.chain_flows() == before, watch.not_true(started), notes=notes)


def _stays_ready(live: Live, hold: float, timeout: float) -> bool:
    """Wait until the chain has been Ready for `hold` seconds on end (a status that flips only after the restarted
    part has caught up is seen, not missed)."""
    deadline, since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if live.chain_ready():
            since = since or time.monotonic()
            if time.monotonic() - since >= hold:
                return True
        else:
            since = None
        time.sleep(0.1)
    return False


def _sigkill_then_restart(child: Child | None, down: float, restart: Callable[[], None]) -> Callable[[], None]:
    """The fault: SIGKILL `child`, reap it, leave it down `down` seconds, then `restart` (as a supervisor would;
    `restart` also makes its owner forget the dead child)."""
    def fault() -> None:
        assert child is not None
        livebed.kill(child.pid)
        child.proc.wait(10)
        time.sleep(down)
        restart()
    return fault


def kill_agent(live: Live, down: float = 1.0) -> FaultResult:
    dpu = live.bed.dpus[live.a]
    fault = _sigkill_then_restart(dpu.agent, down, lambda: (dpu.stop_agent(), live.bed.start_agent(live.a)))
    result = _measure(live, "SIGKILL DPU agent", fault)
    result.orphans = livebed.orphaned_ofctl(live)
    return result


def kill_controller(live: Live, down: float = 1.0) -> FaultResult:
    controller = live.bed.controller
    fault = _sigkill_then_restart(controller.child, down, lambda: (controller.stop(), controller.start()))
    return _measure(live, "SIGKILL controller", fault)


def kill_ovsdb(live: Live, down: float = 1.0) -> FaultResult:
    ovs = live.bed.dpus[live.a].ovs
    assert ovs is not None
    # restart_ovsdb pops the dead child and starts a new one on the same database.
    fault = _sigkill_then_restart(ovs.children["ovsdb-server"], down, ovs.restart_ovsdb)
    return _measure(live, "SIGKILL ovsdb-server", fault)


def kill_vswitchd(live: Live, down: float = 5.0) -> FaultResult:
    ovs = live.bed.dpus[live.a].ovs
    assert ovs is not None
    fault = _sigkill_then_restart(ovs.children["ovs-vswitchd"], down,
                                  lambda: (ovs.stop_vswitchd(), ovs.start_vswitchd()))
    return _measure(live, f"SIGKILL ovs-vswitchd ({down:.0f}s down)", fault)


# -- conflicts -------------------------------------------------------------------------------------------


NEWCOMER_NETDEV = "nc0"


def _interface(name: str, ns: str, group: str, labels: dict[str, str], netdev: str) -> chains.Obj:
    return {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUServiceInterface",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"metadata": {"labels": labels},
                             "spec": {"interfaceType": "physical", "physical": {"interfaceName": netdev}}}}}}}


def _holder_patterns(live: Live, holder: str) -> list[str]:
    """How a message may name the holder: namespaced, as its per-node object, or after its kind."""
    ns, a = re.escape(live.ns), re.escape(live.a)
    h = re.escape(holder)
    end = r"(?![\w-])"
    return [rf"{ns}/{h}{end}", rf"{h}-{a}{end}", rf"(?:DPUService|Service)(?:Interface|Chain)(?:Set)? {h}{end}"]


def conflict(live: Live, case: str) -> FaultResult:
    """One newcomer, by `case`: "labels" (matches the chain's uplink=p0 selector, on its own netdev), "netdev"
    (a second interface on p0), "chain" (a second chain on p1 and p1_sf)."""
    ns, group = live.ns, live.bed.group
    if case == "labels":
        for dpu in live.bed.dpus.values():
            subprocess.run([tool("ip"), "-n", dpu.netns, "link", "add", NEWCOMER_NETDEV, "up", "type", "veth",
                            "peer", "name", f"{NEWCOMER_NETDEV}-pr"], check=False, capture_output=True)
        newcomer = _interface("a-newcomer-uplink", ns, group, {"uplink": "p0"}, NEWCOMER_NETDEV)
        holders, holder_plural, holder = ["p0", CHAIN], "dpuserviceinterfaces", "p0"
    elif case == "netdev":
        newcomer = _interface("a-newcomer-p0", ns, group, {"newcomer": "p0"}, "p0")
        holders, holder_plural, holder = ["p0"], "dpuserviceinterfaces", "p0"
    else:
        chain = next(o for o in chains.hbn_only(ns, group) if o["kind"] == "DPUServiceChain")
        chain["metadata"]["name"] = "a-newcomer-chain"
        switches = chain["spec"]["template"]["spec"]["template"]["spec"]["switches"]
        del switches[0]  # only the p1 switch: uplink p1 and HBN's p1_sf, both held by hbn-to-fabric
        newcomer = chain
        holders, holder_plural, holder = [CHAIN], "dpuservicechains", CHAIN
    plural = "dpuservicechains" if newcomer["kind"] == "DPUServiceChain" else "dpuserviceinterfaces"
    name = newcomer["metadata"]["name"]
    patterns = [p for h in holders for p in _holder_patterns(live, h)]
    reader = live.bed.host_reader
    holder_watch = ReadyWatch(reader, holder_plural, ns, holder)
    status = {"text": "", "named": False}

    def named() -> bool:
        obj = reader.get(plural, ns, name) or {}
        conds = (obj.get("status") or {}).get("conditions") or ()
        status["text"] = "; ".join(f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
                                   for c in conds)
        ready = next((c["status"] for c in conds if c["type"] == "Ready"), None)
        status["named"] = ready != "True" and any(
            c["status"] != "True" and any(re.search(p, c.get("message", "")) for p in patterns) for c in conds)
        return status["named"]

    def fault() -> None:
        live.bed.apply([newcomer])
        with contextlib.suppress(TimeoutError):
            wait_until(named, 10, f"{name}'s conditions to name the holder")
        time.sleep(3.0)  # the agents have acted on whatever the controller sent by now
        live.bed.delete(plural.removesuffix("s"), name)
        try:
            wait_until(lambda: reader.get(plural, ns, name) is None, 30, f"{name} deleted")
        except (TimeoutError, ApiException):
            status["text"] += " (not deleted within 30s)"

    started = time.monotonic()
    result = _measure(live, f"newcomer {case} ({name})", fault)
    holder_watch.stop()
    result.holder_not_ready = holder_watch.not_true(started)
    result.newcomer_status = status["text"]
    result.newcomer_names_holder = bool(status["named"])
    return result


PROCESS_FAULTS: dict[str, Callable[[Live], FaultResult]] = {
    "agent": kill_agent, "controller": kill_controller, "ovsdb-server": kill_ovsdb, "ovs-vswitchd": kill_vswitchd}
CONFLICTS = ("labels", "netdev", "chain")
