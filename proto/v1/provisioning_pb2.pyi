from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RebootMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REBOOT_METHOD_UNSPECIFIED: _ClassVar[RebootMethod]
    REBOOT_METHOD_POWER_CYCLE: _ClassVar[RebootMethod]
    REBOOT_METHOD_POWER_RESET: _ClassVar[RebootMethod]

class InstallState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTALL_STATE_UNSPECIFIED: _ClassVar[InstallState]
    INSTALL_STATE_WAITING: _ClassVar[InstallState]
    INSTALL_STATE_FLASHING: _ClassVar[InstallState]
    INSTALL_STATE_BOOTING: _ClassVar[InstallState]
    INSTALL_STATE_DONE: _ClassVar[InstallState]
    INSTALL_STATE_FAILED: _ClassVar[InstallState]
REBOOT_METHOD_UNSPECIFIED: RebootMethod
REBOOT_METHOD_POWER_CYCLE: RebootMethod
REBOOT_METHOD_POWER_RESET: RebootMethod
INSTALL_STATE_UNSPECIFIED: InstallState
INSTALL_STATE_WAITING: InstallState
INSTALL_STATE_FLASHING: InstallState
INSTALL_STATE_BOOTING: InstallState
INSTALL_STATE_DONE: InstallState
INSTALL_STATE_FAILED: InstallState

class BFBReadRequest(_message.Message):
    __slots__ = ("file_name", "offset")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BFBChunk(_message.Message):
    __slots__ = ("data", "offset", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class DPUProvisioning(_message.Message):
    __slots__ = ("dpu_name", "pci_address", "bfb", "install", "reboot", "host_network")
    DPU_NAME_FIELD_NUMBER: _ClassVar[int]
    PCI_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BFB_FIELD_NUMBER: _ClassVar[int]
    INSTALL_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    HOST_NETWORK_FIELD_NUMBER: _ClassVar[int]
    dpu_name: str
    pci_address: str
    bfb: BFBSource
    install: Install
    reboot: Reboot
    host_network: HostNetwork
    def __init__(self, dpu_name: _Optional[str] = ..., pci_address: _Optional[str] = ..., bfb: _Optional[_Union[BFBSource, _Mapping]] = ..., install: _Optional[_Union[Install, _Mapping]] = ..., reboot: _Optional[_Union[Reboot, _Mapping]] = ..., host_network: _Optional[_Union[HostNetwork, _Mapping]] = ...) -> None: ...

class BFBSource(_message.Message):
    __slots__ = ("file_name", "size", "sha256", "version")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    size: int
    sha256: str
    version: str
    def __init__(self, file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Install(_message.Message):
    __slots__ = ("id", "bf_cfg", "timeout_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    BF_CFG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    bf_cfg: bytes
    timeout_seconds: int
    def __init__(self, id: _Optional[str] = ..., bf_cfg: _Optional[bytes] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class Reboot(_message.Message):
    __slots__ = ("id", "method")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    id: str
    method: RebootMethod
    def __init__(self, id: _Optional[str] = ..., method: _Optional[_Union[RebootMethod, str]] = ...) -> None: ...

class HostNetwork(_message.Message):
    __slots__ = ("num_vfs", "vf_mtu", "bridge")
    NUM_VFS_FIELD_NUMBER: _ClassVar[int]
    VF_MTU_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    num_vfs: int
    vf_mtu: int
    bridge: str
    def __init__(self, num_vfs: _Optional[int] = ..., vf_mtu: _Optional[int] = ..., bridge: _Optional[str] = ...) -> None: ...

class DPUProvisioningStatus(_message.Message):
    __slots__ = ("rshim_holder", "bfb_ready", "bfb_error", "install", "reboot", "host_network")
    RSHIM_HOLDER_FIELD_NUMBER: _ClassVar[int]
    BFB_READY_FIELD_NUMBER: _ClassVar[int]
    BFB_ERROR_FIELD_NUMBER: _ClassVar[int]
    INSTALL_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    HOST_NETWORK_FIELD_NUMBER: _ClassVar[int]
    rshim_holder: str
    bfb_ready: bool
    bfb_error: str
    install: InstallStatus
    reboot: RebootStatus
    host_network: HostNetworkStatus
    def __init__(self, rshim_holder: _Optional[str] = ..., bfb_ready: _Optional[bool] = ..., bfb_error: _Optional[str] = ..., install: _Optional[_Union[InstallStatus, _Mapping]] = ..., reboot: _Optional[_Union[RebootStatus, _Mapping]] = ..., host_network: _Optional[_Union[HostNetworkStatus, _Mapping]] = ...) -> None: ...

class InstallStatus(_message.Message):
    __slots__ = ("id", "state", "bytes_sent", "bytes_total", "rate", "eta_seconds", "log", "error", "host_rebooted")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOST_REBOOTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: InstallState
    bytes_sent: int
    bytes_total: int
    rate: float
    eta_seconds: float
    log: _containers.RepeatedScalarFieldContainer[str]
    error: str
    host_rebooted: bool
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[InstallState, str]] = ..., bytes_sent: _Optional[int] = ..., bytes_total: _Optional[int] = ..., rate: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., log: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., host_rebooted: _Optional[bool] = ...) -> None: ...

class RebootStatus(_message.Message):
    __slots__ = ("id", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    error: str
    def __init__(self, id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class HostNetworkStatus(_message.Message):
    __slots__ = ("ready", "message", "num_vfs", "vf0")
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_VFS_FIELD_NUMBER: _ClassVar[int]
    VF0_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    message: str
    num_vfs: int
    vf0: str
    def __init__(self, ready: _Optional[bool] = ..., message: _Optional[str] = ..., num_vfs: _Optional[int] = ..., vf0: _Optional[str] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("boot_id", "devices", "oob_bridge_configured")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    OOB_BRIDGE_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    devices: _containers.RepeatedCompositeFieldContainer[HostDevice]
    oob_bridge_configured: bool
    def __init__(self, boot_id: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[HostDevice, _Mapping]]] = ..., oob_bridge_configured: _Optional[bool] = ...) -> None: ...

class HostDevice(_message.Message):
    __slots__ = ("pci_address", "device_id", "model", "pf0_name", "rshim", "psid")
    PCI_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PF0_NAME_FIELD_NUMBER: _ClassVar[int]
    RSHIM_FIELD_NUMBER: _ClassVar[int]
    PSID_FIELD_NUMBER: _ClassVar[int]
    pci_address: str
    device_id: str
    model: str
    pf0_name: str
    rshim: str
    psid: str
    def __init__(self, pci_address: _Optional[str] = ..., device_id: _Optional[str] = ..., model: _Optional[str] = ..., pf0_name: _Optional[str] = ..., rshim: _Optional[str] = ..., psid: _Optional[str] = ...) -> None: ...
