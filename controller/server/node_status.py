"""What each node's agent has applied, rejected and reported: the stream server writes it, reconcilers
read it to fold agent state into CR status. In memory only: after a controller restart it is rebuilt from
the versions agents present when they re-subscribe.
"""

from __future__ import annotations

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

    def of(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())


class NodeRegistry:
    def __init__(self) -> None:
        self._nodes: dict[str, NodeStatus] = {}

    def node(self, name: str) -> NodeStatus:
        status = self._nodes.get(name)
        if status is None:
            status = self._nodes[name] = NodeStatus(name)
        return status

    def get(self, name: str) -> NodeStatus | None:
        return self._nodes.get(name)

    def connected(self) -> list[str]:
        return sorted(n for n, s in self._nodes.items() if s.connected)
