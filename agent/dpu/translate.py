"""Pure translation: the controller's dpf.v1 SFC payloads (by resource name "namespace/name") → the SFC
programmer's input dataclasses (`agent/sfc/model.py`), and the programmer's per-object status → the
protocol's object states.

A payload the model refuses raises `ModelError` naming the resource and the field; the handlers turn
those into one NACK. No I/O, no clock.
"""

from __future__ import annotations

from dpf.agent.sfc.model import (
    InterfaceType,
    ModelError,
    Pf,
    Physical,
    Service,
    ServiceChain,
    ServiceInterface,
    Switch,
    Vf,
)
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2

# Programmer messages of chains that wait for something that will come on its own (a port, a pod);
# every other not-ready chain can never be programmed as it stands (desired.plan_chain's REJECTED).
WAITING_PREFIX = "waiting for "


def split_name(name: str) -> tuple[str, str]:
    namespace, sep, rest = name.partition("/")
    if not sep or not namespace or not rest or "/" in rest:
        raise ModelError(f"resource name {name!r} must be '<namespace>/<name>'")
    return namespace, rest


def interface(name: str, message: sfc_pb2.ServiceInterface) -> ServiceInterface:
    namespace, short = split_name(name)
    kind = message.interface_type
    try:
        sub: dict[str, object] = {}
        # Only the sub-struct the type needs, and only if sent: a missing one is the model's error to name.
        if kind == InterfaceType.PHYSICAL and message.HasField("physical"):
            sub["physical"] = Physical(message.physical.interface_name)
        elif kind == InterfaceType.PF and message.HasField("pf"):
            sub["pf"] = Pf(message.pf.pf_id)
        elif kind == InterfaceType.VF and message.HasField("vf"):
            sub["vf"] = Vf(pf_id=message.vf.pf_id, vf_id=message.vf.vf_id)
        elif kind == InterfaceType.SERVICE and message.HasField("service"):
            svc = message.service
            sub["service"] = Service(svc.service_id, svc.network, svc.interface_name, pod=message.pod or None)
        return ServiceInterface(namespace, short, kind, labels=tuple(sorted(message.labels.items())), **sub)
    except ModelError as exc:
        raise _named(name, exc) from None


def _named(name: str, exc: ModelError) -> ModelError:
    text = str(exc)
    return ModelError(text if text.startswith(name) else f"{name}: {text}")


def chain(name: str, message: sfc_pb2.ServiceChain) -> ServiceChain:
    namespace, short = split_name(name)
    try:
        switches = tuple(Switch(tuple(port.service_interface for port in switch.ports))
                         for switch in message.switches)
        return ServiceChain(namespace, short, switches)
    except ModelError as exc:
        raise _named(name, exc) from None


def interface_state(si: ServiceInterface, ready: bool) -> int:
    if ready:
        return pb.OBJECT_STATE_READY
    # vlan is accepted by the CRD but never realised on the DPU (as upstream): that will not change by waiting.
    return pb.OBJECT_STATE_FAILED if si.interface_type is InterfaceType.VLAN else pb.OBJECT_STATE_PROGRESSING


def chain_state(ready: bool, message: str) -> int:
    if ready:
        return pb.OBJECT_STATE_READY
    return pb.OBJECT_STATE_PROGRESSING if message.startswith(WAITING_PREFIX) else pb.OBJECT_STATE_FAILED
