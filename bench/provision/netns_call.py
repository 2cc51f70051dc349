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

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from dpf.agent.cni.links import in_netns as thread_in_netns

P = ParamSpec("P")
T = TypeVar("T")

def in_netns(netns: str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` with this thread in `/run/netns/<netns>`; the thread's own namespace after."""
    with thread_in_netns(f"/run/netns/{netns}"):
        return func(*args, **kwargs)
