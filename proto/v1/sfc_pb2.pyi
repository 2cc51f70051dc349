from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceInterface(_message.Message):
    __slots__ = ("interface_type", "labels", "physical", "vlan", "vf", "pf", "service", "generation", "pod")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INTERFACE_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    VF_FIELD_NUMBER: _ClassVar[int]
    PF_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    interface_type: str
    labels: _containers.ScalarMap[str, str]
    physical: PhysicalSpec
    vlan: VlanSpec
    vf: VfSpec
    pf: PfSpec
    service: ServiceSpec
    generation: int
    pod: str
    def __init__(self, interface_type: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., physical: _Optional[_Union[PhysicalSpec, _Mapping]] = ..., vlan: _Optional[_Union[VlanSpec, _Mapping]] = ..., vf: _Optional[_Union[VfSpec, _Mapping]] = ..., pf: _Optional[_Union[PfSpec, _Mapping]] = ..., service: _Optional[_Union[ServiceSpec, _Mapping]] = ..., generation: _Optional[int] = ..., pod: _Optional[str] = ...) -> None: ...

class PhysicalSpec(_message.Message):
    __slots__ = ("interface_name",)
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    interface_name: str
    def __init__(self, interface_name: _Optional[str] = ...) -> None: ...

class VlanSpec(_message.Message):
    __slots__ = ("vlan_id", "parent_interface_ref")
    VLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_INTERFACE_REF_FIELD_NUMBER: _ClassVar[int]
    vlan_id: int
    parent_interface_ref: str
    def __init__(self, vlan_id: _Optional[int] = ..., parent_interface_ref: _Optional[str] = ...) -> None: ...

class VfSpec(_message.Message):
    __slots__ = ("vf_id", "pf_id", "parent_interface_ref")
    VF_ID_FIELD_NUMBER: _ClassVar[int]
    PF_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_INTERFACE_REF_FIELD_NUMBER: _ClassVar[int]
    vf_id: int
    pf_id: int
    parent_interface_ref: str
    def __init__(self, vf_id: _Optional[int] = ..., pf_id: _Optional[int] = ..., parent_interface_ref: _Optional[str] = ...) -> None: ...

class PfSpec(_message.Message):
    __slots__ = ("pf_id",)
    PF_ID_FIELD_NUMBER: _ClassVar[int]
    pf_id: int
    def __init__(self, pf_id: _Optional[int] = ...) -> None: ...

class ServiceSpec(_message.Message):
    __slots__ = ("service_id", "network", "interface_name")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    network: str
    interface_name: str
    def __init__(self, service_id: _Optional[str] = ..., network: _Optional[str] = ..., interface_name: _Optional[str] = ...) -> None: ...

class ServiceChain(_message.Message):
    __slots__ = ("switches",)
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    switches: _containers.RepeatedCompositeFieldContainer[ServiceChainSwitch]
    def __init__(self, switches: _Optional[_Iterable[_Union[ServiceChainSwitch, _Mapping]]] = ...) -> None: ...

class ServiceChainSwitch(_message.Message):
    __slots__ = ("ports",)
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[ServiceChainPort]
    def __init__(self, ports: _Optional[_Iterable[_Union[ServiceChainPort, _Mapping]]] = ...) -> None: ...

class ServiceChainPort(_message.Message):
    __slots__ = ("service_interface", "match_labels")
    class MatchLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    MATCH_LABELS_FIELD_NUMBER: _ClassVar[int]
    service_interface: str
    match_labels: _containers.ScalarMap[str, str]
    def __init__(self, service_interface: _Optional[str] = ..., match_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
