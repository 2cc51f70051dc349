"""The contract between the runtime and the code that applies one resource type (e.g. the DPU agent's OVS
programmer for dpf.v1.ServiceInterface). One handler per type URL.

`apply()` receives the complete desired set as `{name: (resource version, decoded message)}` plus which
names changed and which were removed since the last successful apply, so a handler can do a full
observe → diff → apply or take the delta as a hint. It reports each object's verdict (PROGRAMMED /
PENDING / REJECTED / FAILED) through the reporter, tagged with the version it planned from.

One bad object never blocks the others: a handler reports it REJECTED (the message names the field) and
applies the rest. `Rejected` is for a set that cannot be applied at all (→ NACK, the previous state stays);
`TransientError` when a retry may succeed (→ the runtime retries with back-off and reports the objects
FAILED meanwhile; no NACK).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from google.protobuf.message import Message

from dpf.proto import versioning
from dpf.proto.v1 import nodestate_pb2 as pb

Desired = Mapping[str, tuple[str, Any]]
"""name → (resource version, decoded payload message)."""


class Rejected(Exception):
    """The desired set as a whole is invalid for this node; `resources` maps names to reasons when known."""

    def __init__(self, message: str, resources: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.resources = dict(resources or {})


class TransientError(Exception):
    """Applying failed for a reason that may go away (device busy, OVS restarting)."""

    def __init__(self, message: str, resources: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.resources = dict(resources or {})


class Reporter(Protocol):
    # `detail`: a typed observation (e.g. DPUProvisioningStatus), sent packed in `ObjectStatus.detail`.
    def report(self, name: str, version: str, verdict: pb.Verdict, message: str = "",
               observed: Mapping[str, str] | None = None, detail: Message | None = None) -> None: ...


class Handler:
    """Base class. Subclasses set `message_class` and implement `apply`."""

    message_class: type[Message]

    @property
    def type_url(self) -> str:
        return versioning.type_url(self.message_class)

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        raise NotImplementedError


class RecordingHandler(Handler):
    """Applies nothing: keeps the desired state (the runtime persists it) and reports every object PROGRAMMED.
    For debugging a node's desired state (`dpf agent --once --record TYPE`) and for benchmarks."""

    def __init__(self, message_class: type[Message]) -> None:
        self.message_class = message_class
        self.desired: dict[str, Any] = {}
        self.applies = 0

    async def apply(self, desired: Desired, changed: set[str], removed: set[str], reporter: Reporter) -> None:
        self.applies += 1
        self.desired = {name: message for name, (_version, message) in desired.items()}
        for name in sorted(changed):
            reporter.report(name, desired[name][0], pb.VERDICT_PROGRAMMED)
