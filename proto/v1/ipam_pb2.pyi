from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IpamPoolType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IPAM_POOL_TYPE_UNSPECIFIED: _ClassVar[IpamPoolType]
    IPAM_POOL_TYPE_IPPOOL: _ClassVar[IpamPoolType]
    IPAM_POOL_TYPE_CIDRPOOL: _ClassVar[IpamPoolType]
IPAM_POOL_TYPE_UNSPECIFIED: IpamPoolType
IPAM_POOL_TYPE_IPPOOL: IpamPoolType
IPAM_POOL_TYPE_CIDRPOOL: IpamPoolType

class IPAMBlock(_message.Message):
    __slots__ = ("pool", "pool_type", "subnet", "start", "end", "gateway", "exclusions", "routes", "default_gateway")
    POOL_FIELD_NUMBER: _ClassVar[int]
    POOL_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    pool: str
    pool_type: IpamPoolType
    subnet: str
    start: str
    end: str
    gateway: str
    exclusions: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[IPAMRoute]
    default_gateway: bool
    def __init__(self, pool: _Optional[str] = ..., pool_type: _Optional[_Union[IpamPoolType, str]] = ..., subnet: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., gateway: _Optional[str] = ..., exclusions: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[IPAMRoute, _Mapping]]] = ..., default_gateway: _Optional[bool] = ...) -> None: ...

class IPAMRoute(_message.Message):
    __slots__ = ("dst", "gw")
    DST_FIELD_NUMBER: _ClassVar[int]
    GW_FIELD_NUMBER: _ClassVar[int]
    dst: str
    gw: str
    def __init__(self, dst: _Optional[str] = ..., gw: _Optional[str] = ...) -> None: ...
