"""Pure translation: the controller's dpf.v1 SFC payloads (by resource name "namespace/name", with their
resource version) → the SFC programmer's input dataclasses (`agent/sfc/model.py`), and the programmer's
verdicts → the protocol's.

A payload the model refuses raises `ModelError` naming the resource and the field; the handlers report
that object REJECTED and program the others. No I/O, no clock.
"""

from __future__ import annotations

from typing import cast

from dpf.agent.sfc.model import (
    InterfaceType,
    ModelError,
    Pf,
    Physical,
    Service,
    ServiceChain,
    ServiceInterface,
    Switch,
    Verdict,
    Vf,
)
from dpf.proto.v1 import nodestate_pb2 as pb
from dpf.proto.v1 import sfc_pb2

VERDICTS = {Verdict.PROGRAMMED: pb.VERDICT_PROGRAMMED, Verdict.PENDING: pb.VERDICT_PENDING,
            Verdict.REJECTED: pb.VERDICT_REJECTED, Verdict.FAILED: pb.VERDICT_FAILED}


def split_name(name: str) -> tuple[str, str]:
    namespace, sep, rest = name.partition("/")
    if not sep or not namespace or not rest or "/" in rest:
        raise ModelError(f"resource name {name!r} must be '<namespace>/<name>'")
    return namespace, rest


def interface(name: str, message: sfc_pb2.ServiceInterface, version: str = "",
              bridges: frozenset[str] = frozenset()) -> ServiceInterface:
    """`bridges`: the agent's own bridges (br-sfc, br-ovn), whose internal ports an uplink may not name."""
    namespace, short = split_name(name)
    kind = message.interface_type
    try:
        physical: Physical | None = None
        pf: Pf | None = None
        vf: Vf | None = None
        service: Service | None = None
        # Only the sub-struct the type needs, and only if sent: a missing one is the model's error to name.
        if kind == InterfaceType.PHYSICAL and message.HasField("physical"):
            uplink = message.physical.interface_name
            if uplink in bridges:
                raise ModelError(f"spec.physical.interfaceName: {uplink!r} is the bridge {uplink}'s own port, "
                                 "not an uplink; name the uplink netdev (e.g. p0)")
            physical = Physical(uplink)
        elif kind == InterfaceType.PF and message.HasField("pf"):
            pf = Pf(message.pf.pf_id)
        elif kind == InterfaceType.VF and message.HasField("vf"):
            vf = Vf(pf_id=message.vf.pf_id, vf_id=message.vf.vf_id)
        elif kind == InterfaceType.SERVICE and message.HasField("service"):
            svc = message.service
            service = Service(svc.service_id, svc.network, svc.interface_name, pod=message.pod or None)
        # The raw wire string: ServiceInterface.__post_init__ validates it (naming a bad value) and converts it.
        return ServiceInterface(namespace, short, cast(InterfaceType, kind), physical=physical, pf=pf, vf=vf,
                                service=service, labels=tuple(sorted(message.labels.items())), version=version)
    except ModelError as exc:
        raise _named(name, exc) from None


def _named(name: str, exc: ModelError) -> ModelError:
    text = str(exc)
    return ModelError(text if text.startswith(name) else f"{name}: {text}")


def chain(name: str, message: sfc_pb2.ServiceChain, version: str = "") -> ServiceChain:
    namespace, short = split_name(name)
    try:
        switches = tuple(Switch(tuple(port.service_interface for port in switch.ports))
                         for switch in message.switches)
        return ServiceChain(namespace, short, switches, version)
    except ModelError as exc:
        raise _named(name, exc) from None
