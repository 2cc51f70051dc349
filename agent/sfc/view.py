"""What the switch looks like, as plain immutable data: the OVSDB replica's rows we care about and dumped flows.

Produced by `ovsdb.py` (SwitchView) and `flows.py` (ObservedFlow), consumed by the pure functions in
`desired.py`. Holds no connection and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObservedPort:
    """A Port row with its (first) Interface; SFC ports never bond, so one interface is all we read."""

    name: str
    bridge: str | None  # None: the row exists but no bridge lists it (being removed)
    external_ids: Mapping[str, str]
    iface_type: str
    iface_options: Mapping[str, str]
    iface_external_ids: Mapping[str, str]
    ofport: int | None  # None: not assigned yet (vswitchd has not caught up)
    error: str | None

    def owned_by(self, owner: str) -> bool:
        return self.external_ids.get("dpf-owner") == owner


@dataclass(frozen=True)
class ObservedBridge:
    name: str
    fail_mode: str | None
    datapath_type: str
    external_ids: Mapping[str, str]


@dataclass(frozen=True)
class SwitchView:
    bridges: Mapping[str, ObservedBridge] = field(default_factory=dict)
    ports: Mapping[str, ObservedPort] = field(default_factory=dict)
    by_dpf_id: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Interface external_ids:dpf-id → names of the ports holding such an interface."""
    cur_cfg: int = 0


@dataclass(frozen=True)
class ObservedFlow:
    """One flow as `ovs-ofctl --no-stats --no-names dump-flows` prints it."""

    cookie: int
    table: int
    priority: int
    match: str
    actions: str
    idle_timeout: int = 0

    @property
    def learned(self) -> bool:
        # Our base flows never time out; anything of ours with an idle timeout was made by `learn`.
        return self.idle_timeout > 0
