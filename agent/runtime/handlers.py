"""The contract between the runtime and the code that applies one resource type (e.g. the DPU agent's OVS
programmer for dpf.v1.ServiceInterface). One handler per type URL.

`apply()` receives the complete desired set (decoded messages by name) plus which names changed and
which were removed since the last successful apply, so a handler can do a full observe → diff → apply
(pattern 8) or take the delta as a hint. It raises `Rejected` when the state can never be applied as
given (→ NACK; the controller surfaces the message on the CR) and `TransientError` when a retry may
succeed (→ the runtime retries with back-off and reports the objects FAILED meanwhile; no NACK).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from google.protobuf.message import Message

from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb


class Rejected(Exception):
    """The desired state is invalid for this node; `resources` maps names to reasons when known."""

    def __init__(self, message: str, resources: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.resources = dict(resources or {})


class TransientError(Exception):
    """Applying failed for a reason that may go away (device busy, OVS restarting)."""

    def __init__(self, message: str, resources: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.resources = dict(resources or {})


class Reporter(Protocol):
    def report(self, name: str, state: pb.ObjectState, message: str = "", observed: Mapping[str, str] | None = None,
               resource_version: str = "") -> None: ...


class Handler:
    """Base class. Subclasses set `message_class` and implement `apply`."""

    message_class: type[Message]

    @property
    def type_url(self) -> str:
        return versioning.type_url(self.message_class)

    async def apply(self, desired: Mapping[str, Any], changed: set[str], removed: set[str],
                    reporter: Reporter) -> None:
        raise NotImplementedError


class RecordingHandler(Handler):
    """Applies nothing: keeps the desired state (the runtime persists it) and reports every object READY.
    For debugging a node's desired state (`dpf agent --once --record TYPE`) and for benchmarks."""

    def __init__(self, message_class: type[Message]) -> None:
        self.message_class = message_class
        self.desired: dict[str, Any] = {}
        self.applies = 0

    async def apply(self, desired: Mapping[str, Any], changed: set[str], removed: set[str],
                    reporter: Reporter) -> None:
        self.applies += 1
        self.desired = dict(desired)
        for name in sorted(changed):
            reporter.report(name, pb.OBJECT_STATE_READY)
