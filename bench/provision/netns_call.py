"""Run one synchronous call with the calling thread inside a named network namespace, then come back.

Why: `bench/provision/agents.py` runs many servers' host agents in one process, each server with its own network
namespace (`lab/emulator/host.py`). The host agent does its netlink work (the OOB bridge check in
`agent/host/detect.py`, VF0 into the bridge in `agent/host/hostnet.py`) in the calling thread's namespace, always on
a worker thread (`asyncio.to_thread`), over a socket it keeps per namespace (`agent/host/rtnl.py`). `setns(2)` with
CLONE_NEWNET moves only the calling thread, and a netlink socket stays in the namespace it was opened in, so
entering the server's namespace for the duration of such a call is what `ip netns exec` does for a whole process,
without a fork (unsafe beside gRPC's threads) and without moving the event loop's thread.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` with this thread in `/run/netns/<netns>`; the thread's own namespace after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            return func(*args, **kwargs)
        finally:
            _setns(own)  # a failure here leaves a pool thread in the wrong namespace: let it raise loudly
    finally:
        os.close(own)
