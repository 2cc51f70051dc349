"""The node's desired SFC state as frozen dataclasses: the programmer's only input.

The agent runtime builds these from the controller's per-node message; the controller has already
selected this node's ServiceInterfaces and resolved every chain port (a `matchLabels` selector
upstream) to the name of exactly one ServiceInterface in the chain's namespace. Constructors check
what can be checked on one object alone and raise `ModelError` naming the field and the fix; what
depends on the whole node (a chain naming an interface the node lacks) is the planner's business.

Never does I/O, never imports anything of OVS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

# Linux IFNAMSIZ is 16 including the NUL; OVS port names for netdevs obey the same bound.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
MAX_SWITCHES = 50  # upstream CRD bound (ServiceChain.spec.switches)
MAX_PORTS = 50  # upstream CRD bound (switch.ports)


class ModelError(ValueError):
    """Desired state that can never be programmed; the message names the field and the fix."""


class Verdict(StrEnum):
    """What a programmer pass decided for one object (the protocol's Verdict)."""

    PROGRAMMED = "programmed"  # realised and live
    PENDING = "pending"  # valid, waiting for something that comes on its own (a pod, an ofport)
    REJECTED = "rejected"  # can never be programmed as it stands; the message names the field and the fix
    FAILED = "failed"  # valid, but the switch cannot realise it now (a port held by someone else, vswitchd down)


class InterfaceType(StrEnum):
    PHYSICAL = "physical"
    PF = "pf"
    VF = "vf"
    OVN = "ovn"
    SERVICE = "service"
    VLAN = "vlan"  # accepted so the agent can report it; upstream leaves it unimplemented too


def _check_name(value: str, field: str) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ModelError(f"{field}: {value!r} is not a valid Kubernetes object name "
                         "(lowercase alphanumerics, '-' and '.')")


def _check_index(value: int, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4095:
        raise ModelError(f"{field}: {value!r} must be an integer between 0 and 4095")


@dataclass(frozen=True)
class Physical:
    interface_name: str  # the uplink netdev, e.g. "p0"

    def __post_init__(self) -> None:
        if not isinstance(self.interface_name, str) or not _IFNAME.match(self.interface_name):
            raise ModelError(f"physical.interfaceName: {self.interface_name!r} is not a valid netdev name "
                             "(1-15 characters of letters, digits, '_', '.', ':' or '-')")


@dataclass(frozen=True)
class Pf:
    pf_id: int

    def __post_init__(self) -> None:
        _check_index(self.pf_id, "pf.pfID")


@dataclass(frozen=True)
class Vf:
    pf_id: int
    vf_id: int

    def __post_init__(self) -> None:
        _check_index(self.pf_id, "vf.pfID")
        _check_index(self.vf_id, "vf.vfID")


@dataclass(frozen=True)
class Service:
    """A port the CNI plugs when the service pod starts; the programmer only looks it up.

    `pod` ("<podNamespace>/<podName>") is the pod on this node that the controller matched through the
    `svc.dpu.nvidia.com/service=<serviceID>` label; None while no such pod exists. The OVS Interface is
    found by `external_ids:dpf-id=<pod>/<interface_name>`, the key upstream's CNI writes.
    """

    service_id: str
    network: str
    interface_name: str
    pod: str | None = None

    def __post_init__(self) -> None:
        for field in ("service_id", "network", "interface_name"):
            if not getattr(self, field):
                raise ModelError(f"service.{_camel(field)} is required for interfaceType service")
        if self.pod is not None and self.pod.count("/") != 1:
            raise ModelError(f"service pod {self.pod!r} must be '<namespace>/<name>'")


@dataclass(frozen=True)
class ServiceInterface:
    namespace: str
    name: str
    interface_type: InterfaceType
    physical: Physical | None = None
    pf: Pf | None = None
    vf: Vf | None = None
    service: Service | None = None
    labels: tuple[tuple[str, str], ...] = ()
    version: str = ""
    """The resource version this was built from; statuses about it carry it back."""

    def __post_init__(self) -> None:
        _check_name(self.namespace, "metadata.namespace")
        _check_name(self.name, "metadata.name")
        try:
            kind = InterfaceType(self.interface_type)
        except ValueError:
            raise ModelError(f"{self.key}: spec.interfaceType {self.interface_type!r} is not one of "
                             f"{', '.join(t.value for t in InterfaceType)}") from None
        object.__setattr__(self, "interface_type", kind)
        subs = {"physical": self.physical, "pf": self.pf, "vf": self.vf, "service": self.service}
        wanted = kind.value if kind.value in subs else None
        if wanted and subs[wanted] is None:
            raise ModelError(f"{self.key}: spec.{wanted} is required when spec.interfaceType is {wanted}")
        extra = [name for name, value in subs.items() if value is not None and name != wanted]
        if extra:
            raise ModelError(f"{self.key}: spec.{extra[0]} must be empty when spec.interfaceType is {kind.value}")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Switch:
    """One L2 segment of a chain: the names of ServiceInterfaces (in the chain's namespace) it joins."""

    ports: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.ports) <= MAX_PORTS:
            raise ModelError(f"switch ports: {len(self.ports)} given, 1 to {MAX_PORTS} allowed")


@dataclass(frozen=True)
class ServiceChain:
    namespace: str
    name: str
    switches: tuple[Switch, ...]
    version: str = ""
    """The resource version this was built from; statuses about it carry it back."""

    def __post_init__(self) -> None:
        _check_name(self.namespace, "metadata.namespace")
        _check_name(self.name, "metadata.name")
        if not 1 <= len(self.switches) <= MAX_SWITCHES:
            raise ModelError(f"{self.key}: spec.switches has {len(self.switches)} entries, "
                             f"1 to {MAX_SWITCHES} allowed")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def interface_keys(self) -> tuple[str, ...]:
        """Every port as a ServiceInterface key, in switch order (duplicates kept: the planner rejects them)."""
        return tuple(f"{self.namespace}/{port}" for switch in self.switches for port in switch.ports)


@dataclass(frozen=True)
class NodeState:
    """Everything this node should have: its ServiceInterfaces and the ServiceChains over them."""

    interfaces: tuple[ServiceInterface, ...] = ()
    chains: tuple[ServiceChain, ...] = ()

    def __post_init__(self) -> None:
        for kind, items in (("ServiceInterface", self.interfaces), ("ServiceChain", self.chains)):
            seen: set[str] = set()
            for item in items:
                if item.key in seen:
                    raise ModelError(f"{kind} {item.key} appears twice in the node state; keys must be unique")
                seen.add(item.key)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest).replace("Id", "ID")
