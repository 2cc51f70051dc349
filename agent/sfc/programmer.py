"""Keeps the SFC bridge equal to the node's desired state; the one place that orders the SFC agent's work.

Everything enters as an event on one queue and one worker thread acts on it:
- `update(state)`: a new desired NodeState → incremental converge: only chains whose inputs (the chain,
  the OpenFlow ports of its interfaces, who claims them) changed get flow mods;
- `resync(reason)`: full observe → diff → apply. Called at start, after an OVSDB reconnect, when the
  OpenFlow monitor reconnects (ovs-vswitchd restarted: its flows are gone), on a slow timer, and after
  a failed apply (with backoff). The incremental path is only an optimisation: a resync after it
  finds nothing to do (tests/sfc/test_programmer.py checks that);
- OVSDB replica updates (a port deleted by hand, an ofport assigned, a service port plugged by the
  CNI): converge again; cheap when nothing changed;
- flows somebody deleted or modified: the touched chains are checked against a cookie-filtered dump.

Each pass is: ports (one OVSDB transaction, waited until ovs-vswitchd applied it), then flows (one
atomic bundle: over the persistent OpenFlow connection, through `ovs-ofctl --bundle` when big; `flows.py`).
Chains we program are recorded on the bridge (`external_ids:dpf-sfc-chain-<cookie>`)
before their flows go in and unrecorded after they leave, so a restarted agent still knows which
cookies are its own and never touches anyone else's flows.

Status: after each pass the programmer calls `on_statuses` (from its worker thread) with the objects whose
verdict changed: PROGRAMMED (a port with its OpenFlow port, a chain with its flows), PENDING (waiting
for a pod, an ofport), REJECTED (can never be programmed as it stands), FAILED (the switch cannot realise
it now: a port held by something else, or the OpenFlow connection lost because ovs-vswitchd or the bridge
is gone; everything programmed is FAILED until a resync after the reconnect succeeds). Each status carries
the resource version of the object it was planned from.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from dpf.agent.sfc import gcpause
from dpf.agent.sfc.desired import (
    CHAIN_RECORD,
    ChainPlan,
    ChainState,
    Resolution,
    chain_mods,
    compute_ports,
    diff_ports,
    plan_chain,
    port_claims,
    record_key,
    resolve,
    resync_mods,
    self_consistent,
)
from dpf.agent.sfc.flows import FlowMonitor, Ofctl, OfctlError
from dpf.agent.sfc.flowspec import FlowMod
from dpf.agent.sfc.model import InterfaceType, NodeState, ServiceChain, ServiceInterface, Verdict
from dpf.agent.sfc.ovsdb import NotRealized, Ovsdb, OvsdbError, OvsdbSettings
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import SwitchView

log = logging.getLogger(__name__)

_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 10.0


@dataclass(frozen=True)
class ObjectStatus:
    kind: str  # "ServiceInterface" | "ServiceChain"
    key: str
    verdict: Verdict
    message: str
    version: str = ""  # the resource version of the object this was planned from

    @property
    def ready(self) -> bool:
        return self.verdict is Verdict.PROGRAMMED


StatusCallback = Callable[[Mapping[str, ObjectStatus]], None]
"""Receives "<kind>/<key>" → status of every object whose status changed; called on the worker thread."""


@dataclass(frozen=True)
class Report:
    """What one pass did; the runtime logs it and tests assert on it."""

    reason: str
    ports: str
    flow_mods: int
    chains: tuple[str, ...]
    seconds: float
    phases: tuple[tuple[str, float], ...] = ()  # (phase, seconds): where the time went


class _Phases:
    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.done: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.done.append((name, now - self._last))
        self._last = now

    @property
    def total(self) -> float:
        return time.monotonic() - self.started


@dataclass
class _Event:
    kind: str  # state | resync | ovsdb | touched | lost | stop
    state: NodeState | None = None
    reason: str = ""
    cookies: frozenset[int] = frozenset()
    future: Future | None = None


@dataclass
class LoopState:
    node: NodeState = field(default_factory=NodeState)
    plans: dict[str, ChainPlan] = field(default_factory=dict)  # per chain: what we believe is installed
    recorded: set[int] = field(default_factory=set)  # cookies recorded on the bridge as ours
    resolutions: dict[str, Resolution] = field(default_factory=dict)
    ports_inputs: tuple = ()  # (interfaces, view.ports, bridge names) the resolutions were computed from
    chains: dict[str, ServiceChain] = field(default_factory=dict)  # the chains `plans` were made from
    planned_resolutions: dict[str, Resolution] = field(default_factory=dict)  # ... and the resolutions
    users: dict[str, set[str]] | None = None  # interface key → chains that list it
    claims: dict[str, str] = field(default_factory=dict)  # interface key → the chain that owns it
    port_verdicts: dict[str, Verdict] = field(default_factory=dict)  # interface key → verdict of its problem
    replanned: set[str] = field(default_factory=set)  # chains re-planned by the last pass
    failures: int = 0
    retry_at: float | None = None
    next_periodic: float = 0.0


class SfcProgrammer:
    def __init__(self, settings: SfcSettings, state: NodeState | None = None, ovsdb: Ovsdb | None = None,
                 on_statuses: StatusCallback | None = None) -> None:
        self.settings = settings
        # The agent's one OVSDB client when given (shared with the CNI server), else one of our own.
        self.ovsdb = ovsdb if ovsdb is not None else Ovsdb(OvsdbSettings.of_sfc(settings))
        self.ovsdb.subscribe(self._on_ovsdb)
        self.ofctl = Ofctl(settings)
        self.monitor = FlowMonitor(settings, self._on_switch_connected, self._on_flows_touched,
                                   on_disconnected=self._on_switch_lost)
        self.ready = threading.Event()  # set after the first successful full resync
        self._state = LoopState(node=state or NodeState())
        self._events: queue.Queue[_Event] = queue.Queue()
        self._statuses: dict[str, ObjectStatus] = {}  # what the passes decided
        self._published: dict[str, ObjectStatus] = {}  # ... as last handed to `on_statuses` (with `_down`)
        self._down: str | None = None  # why the switch is unreachable; None while it answers
        self._on_statuses = on_statuses
        self._status_resolutions: dict | None = None
        self._worker = threading.Thread(target=self._run, name="sfc-programmer", daemon=True)
        self.passes = 0

    # -- public API (any thread) ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Report | None:
        """Connect, program the bridge once (bounded by `timeout`), then watch for drift.

        Returns the first resync's report, or None when it failed (it is retried in the background).
        """
        self.ovsdb.start()
        self._worker.start()
        report = None
        try:
            report = self.resync("start").result(timeout)
        except (OvsdbError, OfctlError) as exc:
            log.warning("first resync failed, retrying in the background: %s", exc)
        self.monitor.start()
        return report

    def stop(self) -> None:
        self._events.put(_Event("stop"))
        if self._worker.is_alive():
            self._worker.join(10)
        self.monitor.stop()
        self.ofctl.close()
        self.ovsdb.stop()

    def update(self, state: NodeState) -> Future[Report]:
        return self._submit(_Event("state", state=state))

    def resync(self, reason: str) -> Future[Report]:
        return self._submit(_Event("resync", reason=reason))

    def statuses(self) -> dict[str, ObjectStatus]:
        """The current status of every object (as last handed to `on_statuses`); for tests and debugging."""
        return dict(self._published)

    def _submit(self, event: _Event) -> Future[Report]:
        event.future = Future()
        self._events.put(event)
        return event.future

    # -- callbacks from the OVSDB and monitor threads: enqueue only ------------------------------

    def _on_ovsdb(self, kind: str) -> None:
        if kind == "reconnected":
            self._events.put(_Event("resync", reason="OVSDB reconnected"))
        else:
            self._events.put(_Event("ovsdb"))

    def _on_switch_connected(self, first: bool) -> None:
        if not first or self._state.failures:
            self._events.put(_Event("resync", reason="ovs-vswitchd (re)connected: its flow table starts empty"))

    def _on_flows_touched(self, cookies: set[int]) -> None:
        self._events.put(_Event("touched", cookies=frozenset(cookies)))

    def _on_switch_lost(self) -> None:
        self._events.put(_Event("lost"))

    # -- the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        self._state.next_periodic = time.monotonic() + self.settings.resync_interval
        while True:
            events = self._collect()
            if any(e.kind == "stop" for e in events):
                _settle([e.future for e in events if e.future], exception=RuntimeError("SFC programmer stopped"))
                return
            self._execute(events)

    def _collect(self) -> list[_Event]:
        s = self._state
        deadline = min(s.next_periodic, s.retry_at or s.next_periodic)
        try:
            first = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            reason = "retry after failure" if s.retry_at and s.retry_at <= s.next_periodic else "periodic"
            return [_Event("resync", reason=reason)]
        events = [first]
        if first.kind in ("ovsdb", "touched"):
            time.sleep(self.settings.settle_delay)  # a burst of IDL updates or deletes is one pass
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _execute(self, events: list[_Event]) -> None:
        s = self._state
        if any(e.kind == "lost" for e in events):
            self._switch_lost()
            events = [e for e in events if e.kind != "lost"]
            if not events:
                return
        states = [e.state for e in events if e.kind == "state"]
        if states:
            assert states[-1] is not None, "a state event always carries its NodeState (see update)"
            s.node = states[-1]
        reasons = [e.reason for e in events if e.kind == "resync"]
        touched = frozenset().union(*(e.cookies for e in events if e.kind == "touched"))
        if len(touched) > self.settings.verify_many:
            reasons.append(f"{len(touched)} chains' flows changed by someone else")
        futures = [e.future for e in events if e.future]
        try:
            if reasons:
                report = self._resync(", ".join(dict.fromkeys(reasons)))
            else:
                report = self._converge("update" if states else "switch changed", touched)
        except (OvsdbError, OfctlError) as exc:
            s.failures += 1
            delay = min(_BACKOFF_FIRST * 2 ** (s.failures - 1), _BACKOFF_MAX)
            s.retry_at = time.monotonic() + delay
            log.warning("SFC apply failed (attempt %d, full resync in %.1fs): %s", s.failures, delay, exc)
            _settle(futures, exception=exc)
            return
        except Exception as exc:  # a bug must not kill the loop; it is logged and retried
            log.exception("SFC programmer pass failed")
            s.failures += 1
            s.retry_at = time.monotonic() + _BACKOFF_MAX
            _settle(futures, exception=exc)
            return
        s.failures, s.retry_at = 0, None
        self.passes += 1
        if report.flow_mods or report.ports != "nothing":
            log.info("SFC %s: ports %s; %d flow mods for %s in %.1f ms", report.reason, report.ports,
                     report.flow_mods, _summary(report.chains), report.seconds * 1000)
        _settle(futures, result=report)

    # -- passes ---------------------------------------------------------------------------------------

    def _resync(self, reason: str) -> Report:
        with gcpause.paused():  # see gcpause: collections midway would walk the growing plan again and again
            return self._resync_paused(reason)

    def _resync_paused(self, reason: str) -> Report:
        s, clock = self._state, _Phases()
        view, ports = self._ports(force=True)
        clock.mark("ports")
        plans = self._plan_all(view, force=True)
        clock.mark("plan")
        observed = self.ofctl.dump()
        clock.mark("dump")
        recorded = _recorded(view, self.settings.bridge)
        lines = resync_mods({plan.cookie: plan for plan in plans.values()}, observed, recorded)
        clock.mark("diff")
        self._install(lines, plans, recorded)
        clock.mark("install")
        s.plans = plans
        self._publish_statuses()
        if self._down is not None:
            log.info("%s answers again and its flows are back: statuses restored", self.settings.bridge)
            self._down = None
            self._emit(None)
        self.ready.set()
        s.next_periodic = time.monotonic() + self.settings.resync_interval
        return Report(reason, ports, len(lines), tuple(sorted(plans)), clock.total, tuple(clock.done))

    def _converge(self, reason: str, touched: frozenset[int]) -> Report:
        s, clock = self._state, _Phases()
        view, ports = self._ports()
        clock.mark("ports")
        plans = self._plan_all(view, force=False)
        clock.mark("plan")
        lines: list[FlowMod] = []
        changed = []
        for key in sorted(set(plans) | set(s.plans)):
            old, new = s.plans.get(key), plans.get(key)
            if old is new and (new is None or new.cookie not in touched):
                continue
            current = new or old
            assert current is not None, "old is new when both are None, and that key was skipped above"
            cookie = current.cookie
            if cookie in touched:
                observed = self.ofctl.dump(cookie)
                lines += resync_mods({cookie: new} if new else {}, observed, {cookie})
            else:
                lines += chain_mods(cookie, old, new)
            changed.append(key)
        # A touched cookie we own but no longer plan (a stale record) is cleaned too.
        for cookie in sorted(touched & (s.recorded - {p.cookie for p in plans.values()})):
            lines += resync_mods({}, self.ofctl.dump(cookie), {cookie})
        clock.mark("diff")
        self._install(lines, plans, s.recorded)
        clock.mark("install")
        s.plans = plans
        self._publish_statuses()
        return Report(reason, ports, len(lines), tuple(changed), clock.total, tuple(clock.done))

    def _ports(self, force: bool = False) -> tuple[SwitchView, str]:
        """Create/fix/delete our ports in one transaction; return the view after it and what was done.

        Skipped when neither the interfaces nor the switch's ports changed since the last pass (the
        replica publishes an unchanged port mapping as the same object).
        """
        s, cfg = self._state, self.settings
        view = self.ovsdb.view
        inputs = (s.node.interfaces, view.ports, frozenset(view.bridges))
        if not force and s.ports_inputs and s.ports_inputs[1] is view.ports and s.ports_inputs == inputs:
            return view, "nothing"
        if cfg.bridge not in view.bridges:
            self.ovsdb.ensure_bridge(cfg.bridge, cfg.datapath_type, cfg.owner)
            log.info("created bridge %s (fail_mode=secure, datapath_type=%s)", cfg.bridge, cfg.datapath_type)
            view = self.ovsdb.view
        desired, problems = compute_ports(s.node.interfaces, cfg, view.bridges)
        change, conflicts = diff_ports(desired, view, cfg.owner)
        verdicts = {si.key: _problem_verdict(si, cfg, view.bridges) for si in s.node.interfaces if si.key in problems}
        for name, message in conflicts.items():
            key = desired[name].interface_key
            if key not in problems:
                problems[key], verdicts[key] = message, Verdict.FAILED
        if change:
            try:
                self.ovsdb.apply_ports(change, cfg.owner)
            except NotRealized as exc:
                log.warning("%s", exc)  # ofports arrive later as IDL updates and trigger another pass
            view = self.ovsdb.view
        s.resolutions = {si.key: resolve(si, view, cfg, problems) for si in s.node.interfaces}
        s.port_verdicts = verdicts
        # After our own change the next IDL update re-checks; only an unchanged pass may be skipped.
        s.ports_inputs = () if change else (s.node.interfaces, view.ports, frozenset(view.bridges))
        return view, change.describe()

    def _plan_all(self, view: SwitchView, force: bool) -> dict[str, ChainPlan]:
        """Plans for every chain. Incremental unless `force`: only chains that changed, that use an interface
        whose resolution changed, or whose ports changed owner are re-planned; the rest keep their plan
        object (identity means unchanged), so a one-chain update costs one chain's work.
        """
        s = self._state
        chains = {c.key: c for c in s.node.chains}
        if force or s.users is None:
            s.claims = port_claims(chains.values(), s.resolutions)
            s.users = {}
            for chain in chains.values():
                for key in chain.interface_keys:
                    s.users.setdefault(key, set()).add(chain.key)
            replan = set(chains)
            plans: dict[str, ChainPlan] = {}
        else:
            replan = self._affected(chains)
            if not replan:
                return s.plans
            plans = {k: v for k, v in s.plans.items() if k in chains}
        for key in replan:
            if key not in chains:
                plans.pop(key, None)
                continue
            plan = plan_chain(chains[key], s.resolutions, s.resolutions, s.claims)
            old = s.plans.get(key)
            if plan.state is ChainState.REJECTED and (old is None or old.message != plan.message):
                log.warning("ServiceChain %s rejected: %s", key, plan.message)
            plans[key] = plan
        s.chains, s.planned_resolutions, s.replanned = chains, s.resolutions, replan
        return plans

    def _affected(self, chains: dict[str, ServiceChain]) -> set[str]:
        """Chains to re-plan, with the claim index (`users`, `claims`) brought up to date on the way."""
        s = self._state
        assert s.users is not None, "_plan_all builds the claim index in a full pass before any incremental one"
        changed = {k for k in chains.keys() | s.chains.keys()
                   if chains.get(k) is not s.chains.get(k) and chains.get(k) != s.chains.get(k)}
        keys: set[str] = set()
        if s.resolutions is not s.planned_resolutions:
            old, new = s.planned_resolutions, s.resolutions
            keys = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        replan = set(changed)
        for key in keys:
            replan |= s.users.get(key, set())
        for name in changed:
            for version, add in ((s.chains.get(name), False), (chains.get(name), True)):
                for key in version.interface_keys if version else ():
                    users = s.users.setdefault(key, set())
                    users.add(name) if add else users.discard(name)
        # A re-planned chain may have become (in)valid on its own, which moves the claims on all its ports.
        for name in replan:
            for version in (s.chains.get(name), chains.get(name)):
                keys.update(version.interface_keys if version else ())
        for key in keys:
            users = s.users.get(key, set())
            owner = min((c for c in users if self_consistent(chains[c], s.resolutions)), default=None)
            if owner != s.claims.get(key):
                replan |= users
                if owner is None:
                    s.claims.pop(key, None)
                else:
                    s.claims[key] = owner
        return replan

    def _install(self, lines: list[FlowMod], plans: Mapping[str, ChainPlan], recorded: set[int]) -> None:
        """Record new cookies, send one bundle, then drop records of chains that have no flows any more."""
        s, bridge = self._state, self.settings.bridge
        live = {plan.cookie: plan.key for plan in plans.values() if plan.flows}
        add = {record_key(c): key for c, key in live.items() if c not in recorded}
        self.ovsdb.set_bridge_ids(bridge, add)
        s.recorded = recorded | set(live)
        self.ofctl.bundle(lines)
        stale = s.recorded - set(live)
        self.ovsdb.set_bridge_ids(bridge, {}, [record_key(c) for c in stale])
        s.recorded -= stale

    def _publish_statuses(self) -> None:
        """Refresh the status of what the last pass re-planned (all interfaces when they were re-resolved)
        and hand the changes to `on_statuses`."""
        s = self._state
        out = self._statuses
        touched: set[str] = set()
        if s.resolutions is not self._status_resolutions:
            interfaces = {si.key: si for si in s.node.interfaces}
            for key in [k for k, v in out.items() if v.kind == "ServiceInterface" and v.key not in interfaces]:
                del out[key]
                touched.add(key)
            for key, res in s.resolutions.items():
                if res.ofport is not None:
                    verdict, message = Verdict.PROGRAMMED, f"OpenFlow port {res.ofport}"
                else:
                    verdict, message = s.port_verdicts.get(key, Verdict.PENDING), res.reason
                status = ObjectStatus("ServiceInterface", key, verdict, message, interfaces[key].version)
                if out.get(f"ServiceInterface/{key}") != status:
                    out[f"ServiceInterface/{key}"] = status
                    touched.add(f"ServiceInterface/{key}")
            self._status_resolutions = s.resolutions
        for key in s.replanned:
            plan = s.plans.get(key)
            touched.add(f"ServiceChain/{key}")
            if plan is None:
                out.pop(f"ServiceChain/{key}", None)
                continue
            out[f"ServiceChain/{key}"] = self._chain_status(key, plan)
        s.replanned = set()
        self._emit(touched)

    def _chain_status(self, key: str, plan: ChainPlan) -> ObjectStatus:
        s = self._state
        version = s.chains[key].version if key in s.chains else ""
        if plan.state is ChainState.PROGRAMMED:
            return ObjectStatus("ServiceChain", key, Verdict.PROGRAMMED,
                                f"{len(plan.flows)} flows, cookie {plan.cookie:#x}", version)
        if plan.state is ChainState.REJECTED:
            return ObjectStatus("ServiceChain", key, Verdict.REJECTED, plan.message, version)
        # Pending on its ports: failed when one of them cannot be realised by waiting.
        chain = s.chains.get(key)
        broken = [k for k in (chain.interface_keys if chain else ())
                  if s.port_verdicts.get(k) in (Verdict.FAILED, Verdict.REJECTED)]
        if broken:
            reasons = "; ".join(f"{k}: {s.resolutions[k].reason}" for k in broken)
            return ObjectStatus("ServiceChain", key, Verdict.FAILED,
                                f"ServiceInterface(s) of the chain cannot be realised: {reasons}", version)
        return ObjectStatus("ServiceChain", key, Verdict.PENDING, plan.message, version)

    def _switch_lost(self) -> None:
        if self._down is None:
            self._down = (f"the OpenFlow connection to {self.settings.bridge} is lost (ovs-vswitchd stopped or the "
                          "bridge was deleted); its flows are restored when it is back")
            log.warning("%s", self._down)
            self._emit(None)

    def _effective(self, status: ObjectStatus) -> ObjectStatus:
        if self._down is not None and status.verdict is Verdict.PROGRAMMED:
            return ObjectStatus(status.kind, status.key, Verdict.FAILED, self._down, status.version)
        return status

    def _emit(self, keys: Iterable[str] | None) -> None:
        """Hand `on_statuses` the effective status of `keys` (all when None) that differ from the last one sent."""
        changed: dict[str, ObjectStatus] = {}
        gone: list[str] = []
        for key in (set(self._statuses) | set(self._published)) if keys is None else keys:
            status = self._statuses.get(key)
            if status is None:
                gone.append(key)
                continue
            effective = self._effective(status)
            if self._published.get(key) != effective:
                changed[key] = effective
        if not changed and not gone:
            return
        published = {**self._published, **changed}  # replaced, never mutated: `statuses()` reads it from any thread
        for key in gone:
            published.pop(key, None)
        self._published = published
        if changed and self._on_statuses is not None:
            try:
                self._on_statuses(changed)
            except Exception:  # a bug in the consumer must not stop programming
                log.exception("the status callback failed")


def _problem_verdict(si: ServiceInterface, settings: SfcSettings, bridges: Iterable[str]) -> Verdict:
    """The verdict of a ServiceInterface that `compute_ports` could not give a port."""
    if si.interface_type is InterfaceType.OVN and settings.ovn_bridge not in bridges:
        return Verdict.PENDING  # OVN-Kubernetes creates its bridge on its own
    return Verdict.REJECTED  # vlan, or a port another interface already realises


def _recorded(view: SwitchView, bridge: str) -> set[int]:
    row = view.bridges.get(bridge)
    if row is None:
        return set()
    out = set()
    for key in row.external_ids:
        if key.startswith(CHAIN_RECORD):
            with contextlib.suppress(ValueError):
                out.add(int(key[len(CHAIN_RECORD):], 16))
    return out


def _settle(futures: list[Future], result: object = None, exception: BaseException | None = None) -> None:
    """Resolve callers' futures; one the caller already cancelled (e.g. an awaiting task that was
    cancelled through asyncio.wrap_future) is skipped: resolving it would raise and kill the worker."""
    for future in futures:
        with contextlib.suppress(InvalidStateError):  # cancelled by its caller meanwhile
            if exception is not None:
                future.set_exception(exception)
            else:
                future.set_result(result)


def _summary(chains: Sequence[str], shown: int = 5) -> str:
    """Chain names for a log line: a resync of 1,000 chains must not print 1,000 names."""
    if not chains:
        return "no chain"
    head = ", ".join(chains[:shown])
    return head if len(chains) <= shown else f"{head} and {len(chains) - shown} more chains"
