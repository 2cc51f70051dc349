"""The DPU agent's handlers for dpf.v1.ServiceInterface and dpf.v1.ServiceChain: one shared desired state
(`SfcState`) fed to the SFC programmer (`agent/sfc/programmer.py`), and the programmer's per-object status
reported back to the controller.

- A payload the model refuses (bad name, missing sub-struct) → `Rejected` → NACK naming the resource.
- A programmer pass that fails (OVSDB or OpenFlow error, timeout) → `TransientError`: the runtime retries
  with back-off and reports the objects FAILED meanwhile; no NACK.
- Status: READY only when the programmer says the port has its OpenFlow port / the chain's flows are
  installed; PROGRESSING while it waits (a service pod not plugged yet, vswitchd assigning an ofport, a
  chain's interface still on its way from the controller); FAILED for what waiting cannot fix. Each
  report carries the exact resource version it describes. Besides after each apply, statuses are polled
  (`poll_statuses`): the programmer also converges on its own, e.g. when the CNI plugs a pod's port.

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
from dpf.agent.runtime.handlers import Handler, Rejected, Reporter, TransientError
from dpf.agent.runtime.store import StoredResource
from dpf.agent.sfc.model import ModelError, NodeState, ServiceChain, ServiceInterface
from dpf.agent.sfc.programmer import SfcProgrammer
from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2

log = logging.getLogger(__name__)

INTERFACE_TYPE = versioning.type_url(sfc_pb2.ServiceInterface)
CHAIN_TYPE = versioning.type_url(sfc_pb2.ServiceChain)


def _version(message: Any) -> str:
    return versioning.resource_version(versioning.pack(message))


class SfcState:
    """The node's SFC desired state as both handlers last accepted it, and what was reported about it."""

    def __init__(self, apply_timeout: float = 30.0) -> None:
        self.apply_timeout = apply_timeout
        self.programmer: SfcProgrammer | None = None
        self.interfaces: dict[str, ServiceInterface] = {}
        self.chains: dict[str, ServiceChain] = {}
        self.versions: dict[str, dict[str, str]] = {INTERFACE_TYPE: {}, CHAIN_TYPE: {}}
        self.reporter_for: Callable[[str], Reporter] | None = None
        self._sent: dict[tuple[str, str], tuple[int, str, str]] = {}

    def node_state(self) -> NodeState:
        return NodeState(tuple(self.interfaces[k] for k in sorted(self.interfaces)),
                         tuple(self.chains[k] for k in sorted(self.chains)))

    def load_stored(self, stored: Mapping[str, Mapping[str, StoredResource]]) -> NodeState:
        """Seed from the runtime's stored sets (type URL → name → resource); entries that no longer decode or
        validate are skipped (the controller's next response replaces them)."""
        for type_url, message_class, build, target in (
                (INTERFACE_TYPE, sfc_pb2.ServiceInterface, translate.interface, self.interfaces),
                (CHAIN_TYPE, sfc_pb2.ServiceChain, translate.chain, self.chains)):
            for name, resource in (stored.get(type_url) or {}).items():
                message = message_class()
                try:
                    if resource.body.Unpack(message):
                        target[name] = build(name, message)
                        self.versions[type_url][name] = resource.version
                except (DecodeError, ModelError) as exc:
                    log.warning("stored %s %s no longer applies: %s", type_url.rsplit(".", 1)[-1], name, exc)
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
            raise TransientError(f"programming br-sfc failed: {exc}") from None

    def publish(self) -> int:
        """Report every object whose (state, message, version) changed since the last report; returns how many."""
        if self.programmer is None or self.reporter_for is None:
            return 0
        statuses = self.programmer.statuses()
        count = 0
        for type_url, kind, items in ((INTERFACE_TYPE, "ServiceInterface", self.interfaces),
                                      (CHAIN_TYPE, "ServiceChain", self.chains)):
            reporter = self.reporter_for(type_url)
            for name, obj in items.items():
                version = self.versions[type_url].get(name, "")
                state, message = self._state_of(kind, name, obj, statuses.get(f"{kind}/{name}"))
                key = (type_url, name)
                if self._sent.get(key) == (state, message, version):
                    continue
                self._sent[key] = (state, message, version)
                reporter.report(name, state, message, resource_version=version)
                count += 1
        live = {(t, n) for t, names in self.versions.items() for n in names}
        for key in [k for k in self._sent if k not in live]:
            del self._sent[key]
        return count

    def _state_of(self, kind: str, name: str, obj: Any, status: Any) -> tuple[int, str]:
        if kind == "ServiceChain":
            missing = [k for k in obj.interface_keys if k not in self.interfaces]
            if missing:
                return pb.OBJECT_STATE_PROGRESSING, f"waiting for ServiceInterface(s) {', '.join(sorted(set(missing)))}"
            if status is None:
                return pb.OBJECT_STATE_PROGRESSING, "waiting for the SFC programmer"
            return translate.chain_state(status.ready, status.message), status.message
        if status is None:
            return pb.OBJECT_STATE_PROGRESSING, "waiting for the SFC programmer"
        return translate.interface_state(obj, status.ready), status.message

    async def poll_statuses(self, interval: float) -> None:
        """Report status changes the programmer makes on its own (ports plugged, vswitchd restarts)."""
        while True:
            await asyncio.sleep(interval)
            self.publish()


class _SfcHandler(Handler):
    kind: str
    build: Callable[[str, Any], Any]

    def __init__(self, state: SfcState) -> None:
        self.state = state

    def _target(self) -> dict[str, Any]:
        raise NotImplementedError

    async def apply(self, desired: Mapping[str, Any], changed: set[str], removed: set[str],
                    reporter: Reporter) -> None:
        built: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, message in desired.items():
            try:
                built[name] = type(self).build(name, message)
            except ModelError as exc:
                errors[name] = str(exc)
        if errors:
            raise Rejected(f"{len(errors)} {self.kind}(s) cannot be programmed: "
                           + "; ".join(errors[n] for n in sorted(errors)), errors)
        target = self._target()
        target.clear()
        target.update(built)
        self.state.versions[self.type_url] = {name: _version(message) for name, message in desired.items()}
        await self.state.push()
        self.state.publish()


class ServiceInterfaceHandler(_SfcHandler):
    message_class = sfc_pb2.ServiceInterface
    kind = "ServiceInterface"
    build = staticmethod(translate.interface)

    def _target(self) -> dict[str, Any]:
        return self.state.interfaces


class ServiceChainHandler(_SfcHandler):
    message_class = sfc_pb2.ServiceChain
    kind = "ServiceChain"
    build = staticmethod(translate.chain)

    def _target(self) -> dict[str, Any]:
        return self.state.chains
