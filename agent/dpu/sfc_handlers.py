"""The DPU agent's handlers for dpf.v1.ServiceInterface and dpf.v1.ServiceChain: one shared desired state
(`SfcState`) fed to the SFC programmer (`agent/sfc/programmer.py`), and the programmer's per-object
verdicts reported back to the controller.

- A payload the model refuses (bad name, vfID out of range, an uplink naming the bridge's own port) is
  that object's problem only: it is reported REJECTED with the model's message (which names the field) and
  every other object is programmed.
- A programmer pass that fails (OVSDB or OpenFlow error, timeout) → `TransientError`: the runtime retries
  with back-off and reports the objects FAILED meanwhile; no NACK.
- Status: the programmer's verdict per object (PROGRAMMED / PENDING / REJECTED / FAILED), handed over by its
  callback after every pass, including the passes it makes on its own (a pod's port plugged by the CNI,
  ovs-vswitchd gone and back). Each report carries the resource version the verdict was planned from.
  A chain naming an interface that is still on its way from the controller is PENDING; one naming an
  interface this agent rejected is FAILED, naming it.

The two types arrive on independent responses; each apply pushes the latest of both, so the programmer
always sees one consistent NodeState. At start-up the state stored by the runtime for both types seeds
the programmer before anything is applied (`load_stored`), so an agent restart never drops flows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from dpf.agent.dpu import translate
from dpf.agent.runtime.handlers import Desired, Handler, Reporter, TransientError
from dpf.agent.runtime.store import StoredResource
from dpf.agent.sfc.model import ModelError, NodeState, ServiceChain, ServiceInterface, Verdict
from dpf.agent.sfc.programmer import ObjectStatus, SfcProgrammer
from dpf.proto import versioning
from dpf.proto.v1 import sfc_pb2

log = logging.getLogger(__name__)

INTERFACE_TYPE = versioning.type_url(sfc_pb2.ServiceInterface)
CHAIN_TYPE = versioning.type_url(sfc_pb2.ServiceChain)
KINDS = {INTERFACE_TYPE: "ServiceInterface", CHAIN_TYPE: "ServiceChain"}

Report = tuple[Verdict, str, str]
"""(verdict, message, resource version) of one object as reported."""


class SfcState:
    """The node's SFC desired state as both handlers last accepted it, and what was reported about it."""

    def __init__(self, apply_timeout: float = 30.0, bridges: frozenset[str] = frozenset()) -> None:
        self.apply_timeout = apply_timeout
        self.bridges = bridges  # the agent's own bridges: an uplink may not name their internal ports
        self.programmer: SfcProgrammer | None = None
        self.interfaces: dict[str, ServiceInterface] = {}
        self.chains: dict[str, ServiceChain] = {}
        self.rejected: dict[str, dict[str, tuple[str, str]]] = {INTERFACE_TYPE: {}, CHAIN_TYPE: {}}
        """type URL → name → (version, why) of objects the model refused."""
        self.reporter_for: Callable[[str], Reporter] | None = None  # set by the agent
        self.loop: asyncio.AbstractEventLoop | None = None
        self._programmed: dict[str, ObjectStatus] = {}  # "<kind>/<key>" → the programmer's latest verdict
        self._sent: dict[tuple[str, str], Report] = {}

    def node_state(self) -> NodeState:
        return NodeState(tuple(self.interfaces[k] for k in sorted(self.interfaces)),
                         tuple(self.chains[k] for k in sorted(self.chains)))

    def build(self, type_url: str, name: str, version: str, message: Any) -> ServiceInterface | ServiceChain:
        if type_url == INTERFACE_TYPE:
            return translate.interface(name, message, version, self.bridges)
        return translate.chain(name, message, version)

    def load_stored(self, stored: Mapping[str, Mapping[str, StoredResource]]) -> NodeState:
        """Seed from the runtime's stored sets (type URL → name → resource); entries that no longer decode or
        validate are skipped (the runtime re-applies the stored state at start-up and reports them)."""
        for type_url, message_class, target in ((INTERFACE_TYPE, sfc_pb2.ServiceInterface, self.interfaces),
                                                (CHAIN_TYPE, sfc_pb2.ServiceChain, self.chains)):
            for name, resource in (stored.get(type_url) or {}).items():
                message = message_class()
                try:
                    if resource.body.Unpack(message):
                        target[name] = self.build(type_url, name, resource.version, message)  # type: ignore[assignment]
                except (DecodeError, ModelError) as exc:
                    log.warning("stored %s %s no longer applies: %s", KINDS[type_url], name, exc)
        return self.node_state()

    async def push(self) -> None:
        """One programmer pass over the current state; transient failures become TransientError."""
        assert self.programmer is not None, "the SFC programmer starts before any handler runs"
        future = self.programmer.update(self.node_state())
        try:
            # Shielded: a cancelled apply (stream gone) must not cancel the programmer's pass under it.
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.apply_timeout)
        except TimeoutError:
            raise TransientError(f"the SFC programmer did not finish a pass within {self.apply_timeout:.0f}s") \
                from None
        except Exception as exc:  # noqa: BLE001 - OvsdbError, OfctlError, or a logged bug: all retried
            raise TransientError(f"programming the SFC bridge failed: {exc}") from None

    # ---- status ------------------------------------------------------------------------------------------
    def on_statuses(self, changed: Mapping[str, ObjectStatus]) -> None:
        """The programmer's callback (its worker thread): hand the news to the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._merge, dict(changed))

    def _merge(self, changed: Mapping[str, ObjectStatus]) -> None:
        self._programmed.update(changed)
        self.publish()

    def publish(self) -> int:
        """Report every object whose (verdict, message, version) changed since the last report; returns how many."""
        if self.reporter_for is None:
            return 0
        count = 0
        live: set[tuple[str, str]] = set()
        for type_url, items in ((INTERFACE_TYPE, self.interfaces), (CHAIN_TYPE, self.chains)):
            reporter: Reporter = self.reporter_for(type_url)
            reports = {name: self._report_of(type_url, obj) for name, obj in items.items()}
            reports.update({name: (Verdict.REJECTED, why, version)
                            for name, (version, why) in self.rejected[type_url].items()})
            for name, report in reports.items():
                key = (type_url, name)
                live.add(key)
                if self._sent.get(key) == report:
                    continue
                self._sent[key] = report
                verdict, message, version = report
                reporter.report(name, version, translate.VERDICTS[verdict], message)
                count += 1
        for key in [k for k in self._sent if k not in live]:
            del self._sent[key]
        self._programmed = {k: v for k, v in self._programmed.items()
                            if (INTERFACE_TYPE if v.kind == "ServiceInterface" else CHAIN_TYPE, v.key) in live}
        return count

    def forget_sent(self, type_url: str) -> None:
        self._sent = {k: v for k, v in self._sent.items() if k[0] != type_url}

    def _report_of(self, type_url: str, obj: ServiceInterface | ServiceChain) -> Report:
        if isinstance(obj, ServiceChain):
            missing = sorted({k for k in obj.interface_keys if k not in self.interfaces})
            refused = [f"{k}: {self.rejected[INTERFACE_TYPE][k][1]}" for k in missing
                       if k in self.rejected[INTERFACE_TYPE]]
            if refused:
                return (Verdict.FAILED, "ServiceInterface(s) of the chain were rejected by the node: "
                        + "; ".join(refused), obj.version)
            if missing:
                return Verdict.PENDING, f"waiting for ServiceInterface(s) {', '.join(missing)}", obj.version
        status = self._programmed.get(f"{KINDS[type_url]}/{obj.key}")
        if status is None:
            return Verdict.PENDING, "waiting for the SFC programmer", obj.version
        return status.verdict, status.message, status.version


class _SfcHandler(Handler):
    def __init__(self, state: SfcState) -> None:
        self.state = state

    def _target(self) -> dict[str, Any]:
        raise NotImplementedError

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        built: dict[str, Any] = {}
        rejected: dict[str, tuple[str, str]] = {}
        for name, (version, message) in desired.items():
            try:
                built[name] = self.state.build(self.type_url, name, version, message)
            except ModelError as exc:
                rejected[name] = (version, str(exc))
                if name in changed:
                    log.warning("rejecting %s %s: %s", KINDS[self.type_url], name, exc)
        target = self._target()
        target.clear()
        target.update(built)
        self.state.rejected[self.type_url] = rejected
        try:
            await self.state.push()
        except TransientError:
            self.state.forget_sent(self.type_url)  # the runtime reports them FAILED: the next verdict must go out
            raise
        self.state.publish()


class ServiceInterfaceHandler(_SfcHandler):
    message_class = sfc_pb2.ServiceInterface

    def _target(self) -> dict[str, Any]:
        return self.state.interfaces


class ServiceChainHandler(_SfcHandler):
    message_class = sfc_pb2.ServiceChain

    def _target(self) -> dict[str, Any]:
        return self.state.chains
