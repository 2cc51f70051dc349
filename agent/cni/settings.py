"""Settings of the agent's CNI server, one typed group (anchors pattern 19)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dpf.cni import wire


@dataclass(frozen=True)
class CniSettings:
    socket: Path = Path(wire.DEFAULT_SOCKET)
    """The shim's unix socket; its directory is recreated 0700 and the socket is 0600 (root only)."""
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    """OVSDB remote of the local switch, when the CNI server runs alone (in the DPU agent it shares the agent's
    one OVSDB client)."""
    state_dir: Path = Path("/var/lib/dpf/cni")
    """Holds `leases.json`, the node's IP leases."""
    max_concurrent: int = 16
    """Requests doing work at once; the rest wait (bounded memory under bursts)."""
    max_pending: int = 512
    """Requests accepted at once (working + waiting); beyond that the agent answers 11 at once."""
    request_timeout: float = 60.0
    """Upper bound on one request inside the agent (below the shim's overall deadline)."""
    read_timeout: float = 5.0
    """Seconds a client may take to send its request line."""
    ovs_timeout: float = 10.0
    """When run alone: bound on connecting to OVSDB, on one transaction committing, and on vswitchd realizing it."""
    resync_interval: float = 60.0
    """Seconds between full resyncs that reclaim attachments whose pod is gone."""
    drain_timeout: float = 10.0
    """On stop, seconds in-flight requests get to finish."""
