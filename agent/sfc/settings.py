"""Settings of the SFC programmer: one typed dataclass, loaded once by the agent's main and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SfcSettings:
    ovs_rundir: Path = Path("/var/run/openvswitch")
    """Where ovsdb-server's `db.sock` and each bridge's OpenFlow socket `<bridge>.mgmt` live."""

    ovsdb_remote: str | None = None
    """OVSDB remote; None means `unix:<ovs_rundir>/db.sock`."""

    bridge: str = "br-sfc"
    """The SFC bridge; created (fail_mode=secure) when absent."""

    datapath_type: str = "netdev"
    """Bridge datapath when the agent creates it: `netdev` (DOCA/DPDK and the userspace test bed)."""

    port_type: str = "dpdk"
    """Interface.type for physical/pf/vf ports: `dpdk` for BlueField representors, `system` for veths."""

    ovn_bridge: str = "br-ovn"
    """OVN-Kubernetes' gateway bridge: home of `puplinkbrovn`, the br-ovn end of an `ovn` interface."""

    owner: str = "dpf-sfc"
    """Value of `external_ids:dpf-owner` on every row we create; rows without it are never changed or removed."""

    ofctl: str = "ovs-ofctl"
    """The ovs-ofctl binary (found on PATH unless absolute)."""

    openflow_version: str = "OpenFlow13"
    """Protocol for ovs-ofctl; 1.3 is the lowest with bundles and OXM."""

    ovsdb_connect_timeout: float = 10.0
    """Start-up bound for the first OVSDB sync."""

    ovsdb_txn_timeout: float = 10.0
    """Bound for one transaction to commit."""

    realize_timeout: float = 10.0
    """Bound for ovs-vswitchd to apply a committed port change (`cur_cfg` reaching our `next_cfg`)."""

    ofctl_timeout: float = 10.0
    """Bound for one ovs-ofctl run (a bundle or a dump)."""

    openflow_timeout: float = 10.0
    """Bound for connecting to the bridge's OpenFlow socket, and for one bundle sent over that connection."""

    connection_max_mods: int = 500
    """Bundles of up to this many flow mods go over the persistent OpenFlow connection, bigger ones (full
    resyncs) through `ovs-ofctl --bundle`: its C encoder wins from about a thousand mods on (bench/RESULTS.md)."""

    switch_reconnect_interval: float = 0.05
    """How often to retry the OpenFlow monitor connection while ovs-vswitchd is away."""

    resync_interval: float = 300.0
    """Slow full resync, a safety net behind the event-driven repair."""

    settle_delay: float = 0.02
    """Events arriving within this window are merged into one apply (a burst of IDL updates, many deletes)."""

    verify_many: int = 20
    """More hand-deleted chains than this in one burst → one full resync instead of per-chain checks."""

    @property
    def remote(self) -> str:
        return self.ovsdb_remote or f"unix:{self.ovs_rundir / 'db.sock'}"

    def of_target(self, bridge: str | None = None) -> str:
        return f"unix:{self.ovs_rundir / f'{bridge or self.bridge}.mgmt'}"
