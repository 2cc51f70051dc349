from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_HOST: _ClassVar[Role]
    ROLE_DPU: _ClassVar[Role]

class ObjectState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECT_STATE_UNSPECIFIED: _ClassVar[ObjectState]
    OBJECT_STATE_READY: _ClassVar[ObjectState]
    OBJECT_STATE_PROGRESSING: _ClassVar[ObjectState]
    OBJECT_STATE_FAILED: _ClassVar[ObjectState]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PROGRAMMED: _ClassVar[Verdict]
    VERDICT_PENDING: _ClassVar[Verdict]
    VERDICT_REJECTED: _ClassVar[Verdict]
    VERDICT_FAILED: _ClassVar[Verdict]
ROLE_UNSPECIFIED: Role
ROLE_HOST: Role
ROLE_DPU: Role
OBJECT_STATE_UNSPECIFIED: ObjectState
OBJECT_STATE_READY: ObjectState
OBJECT_STATE_PROGRESSING: ObjectState
OBJECT_STATE_FAILED: ObjectState
VERDICT_UNSPECIFIED: Verdict
VERDICT_PROGRAMMED: Verdict
VERDICT_PENDING: Verdict
VERDICT_REJECTED: Verdict
VERDICT_FAILED: Verdict

class StreamRequest(_message.Message):
    __slots__ = ("hello", "request", "status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    request: DiscoveryRequest
    status: StatusReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., request: _Optional[_Union[DiscoveryRequest, _Mapping]] = ..., status: _Optional[_Union[StatusReport, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("welcome", "response")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    response: DiscoveryResponse
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., response: _Optional[_Union[DiscoveryResponse, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "role", "agent_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    role: Role
    agent_version: str
    def __init__(self, node: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node", "role", "controller")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    node: str
    role: Role
    controller: str
    def __init__(self, node: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., controller: _Optional[str] = ...) -> None: ...

class DiscoveryRequest(_message.Message):
    __slots__ = ("type_url", "version_info", "response_nonce", "error_detail", "resource_versions")
    class ResourceVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_info: str
    response_nonce: str
    error_detail: ErrorDetail
    resource_versions: _containers.ScalarMap[str, str]
    def __init__(self, type_url: _Optional[str] = ..., version_info: _Optional[str] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ..., resource_versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("message", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    message: str
    resources: _containers.ScalarMap[str, str]
    def __init__(self, message: _Optional[str] = ..., resources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DiscoveryResponse(_message.Message):
    __slots__ = ("type_url", "version_info", "nonce", "full_state", "resources", "removed_resources")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    FULL_STATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_info: str
    nonce: str
    full_state: bool
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    removed_resources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type_url: _Optional[str] = ..., version_info: _Optional[str] = ..., nonce: _Optional[str] = ..., full_state: _Optional[bool] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., removed_resources: _Optional[_Iterable[str]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("name", "version", "body")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    body: _any_pb2.Any
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., body: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("type_url", "objects", "full")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    objects: _containers.RepeatedCompositeFieldContainer[ObjectStatus]
    full: bool
    def __init__(self, type_url: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[ObjectStatus, _Mapping]]] = ..., full: _Optional[bool] = ...) -> None: ...

class ObjectStatus(_message.Message):
    __slots__ = ("name", "resource_version", "state", "message", "observed", "verdict", "detail")
    class ObservedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: str
    state: ObjectState
    message: str
    observed: _containers.ScalarMap[str, str]
    verdict: Verdict
    detail: _any_pb2.Any
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[str] = ..., state: _Optional[_Union[ObjectState, str]] = ..., message: _Optional[str] = ..., observed: _Optional[_Mapping[str, str]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., detail: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...
