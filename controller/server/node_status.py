"""What each node's agent has applied, rejected and reported: the stream server writes it, reconcilers
read it to fold agent state into CR status. In memory only: after a controller restart (or a new leadership
term) it is rebuilt from the versions and statuses agents present when they re-subscribe; until a node's
agent has spoken (`heard`) or `STATUS_GRACE` has passed, reconcilers keep the status they wrote before
rather than writing "agent not connected" for an agent that is merely reconnecting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dpf.proto.v1 import nodestate_pb2 as pb


@dataclass
class Nack:
    version: str
    message: str
    resource_errors: dict[str, str]
    implicated: dict[str, str]
    """name -> resource version of the resources the rejected response carried (or named by the agent)."""


@dataclass
class TypeStatus:
    acked_version: str = ""
    acked: dict[str, str] = field(default_factory=dict)
    """name -> resource version the agent has applied."""
    nack: Nack | None = None
    observed: dict[str, pb.ObjectStatus] = field(default_factory=dict)


@dataclass
class NodeStatus:
    node: str
    role: str = ""
    connected: bool = False
    types: dict[str, TypeStatus] = field(default_factory=dict)
    heard: set[str] = field(default_factory=set)
    """Type URLs the agent reported on (status, ACK or NACK) during this leadership term."""

    def of(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())


STATUS_GRACE = 20.0  # seconds after a term starts during which an unheard agent's old status is kept


class NodeRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes: dict[str, NodeStatus] = {}
        self._clock = clock
        self.term_started = clock()

    def new_term(self) -> None:
        """This replica starts serving agents (start-up, or leadership won): nothing has been heard yet."""
        self.term_started = self._clock()
        for status in self._nodes.values():
            status.heard.clear()

    def heard(self, node: str, type_url: str) -> bool:
        status = self._nodes.get(node)
        return status is not None and type_url in status.heard

    def grace_left(self) -> float:
        """Seconds left during which status written before this term is kept for agents not heard yet."""
        return max(0.0, STATUS_GRACE - (self._clock() - self.term_started))

    def node(self, name: str) -> NodeStatus:
        status = self._nodes.get(name)
        if status is None:
            status = self._nodes[name] = NodeStatus(name)
        return status

    def get(self, name: str) -> NodeStatus | None:
        return self._nodes.get(name)

    def connected(self) -> list[str]:
        return sorted(n for n, s in self._nodes.items() if s.connected)
