"""Every failure of a CNI request becomes one CNI error here, and only here (anchors pattern 15).

The handlers raise whatever is natural (allocator refusals, OSError from netlink, OVS errors,
timeouts); `to_cni` maps them to the spec's code space or to ours (>= 100, `dpf.cni.wire`). The
message names the field or object at fault and never carries a config or a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from dpf.agent.ipam.allocator import AddressUnavailable, AllocationError, PoolExhausted, UnknownPool
from dpf.agent.ipam.service import IpamIOError
from dpf.cni import wire

log = logging.getLogger(__name__)


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def wire(self) -> dict:
        return wire.error(self.code, self.msg, self.details)


class ConfigError(CniError):
    """Invalid network configuration (code 7); `field` is the JSON path at fault."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(wire.INVALID_NETWORK_CONFIG, f"{field}: {msg}", f"field {field}")


class EnvError(CniError):
    def __init__(self, var: str, msg: str) -> None:
        super().__init__(wire.INVALID_ENVIRONMENT, f"{var}: {msg}", f"variable {var}")


class SwitchError(Exception):
    """OVS refused or did not realize a change; `transient` errors are worth a retry (code 11)."""

    def __init__(self, msg: str, transient: bool = False) -> None:
        super().__init__(msg)
        self.transient = transient


class LinkError(Exception):
    """A netlink step failed; carries the errno when there is one."""

    def __init__(self, msg: str, err: int = 0) -> None:
        super().__init__(msg)
        self.errno = err


def to_cni(exc: BaseException, what: str) -> CniError:
    """Map any failure of request `what` (e.g. "ADD c1/net1") to the CNI error the runtime sees."""
    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, PoolExhausted):
        return CniError(wire.POOL_EXHAUSTED, str(exc), "field ipam")
    if isinstance(exc, AddressUnavailable):
        return CniError(wire.ADDRESS_UNAVAILABLE, str(exc), f"field {exc.field}")
    if isinstance(exc, UnknownPool):
        # The controller may simply not have sent this node's block yet: worth retrying.
        return CniError(wire.TRY_AGAIN_LATER, str(exc), "field ipam.poolNames")
    if isinstance(exc, AllocationError):
        return CniError(wire.ADDRESS_UNAVAILABLE, str(exc), f"field {exc.field}")
    if isinstance(exc, IpamIOError):
        return CniError(wire.IO_FAILURE, str(exc))
    if isinstance(exc, SwitchError):
        return CniError(wire.TRY_AGAIN_LATER if exc.transient else wire.SWITCH_FAILURE, str(exc))
    if isinstance(exc, LinkError):
        if exc.errno == errno.EEXIST:
            return CniError(wire.INTERFACE_EXISTS, str(exc))
        return CniError(wire.INTERNAL, str(exc), f"errno {exc.errno}")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return CniError(wire.TRY_AGAIN_LATER, f"{what} timed out: {exc or 'deadline passed'}")
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return CniError(wire.INTERNAL, f"{what} failed: {type(exc).__name__}: {exc}")
