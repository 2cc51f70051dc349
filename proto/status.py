"""Object status on the wire: the typed `Verdict` every agent reports, and the older `ObjectState` kept for
agents and controllers that predate it. Both sides build and read statuses only through here, so the
mapping between the two lives in one place. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping

from dpf.proto.v1 import nodestate_pb2 as pb

# What an older controller understands of each verdict (it knows READY, PROGRESSING and FAILED only).
_LEGACY_STATE = {
    pb.VERDICT_PROGRAMMED: pb.OBJECT_STATE_READY,
    pb.VERDICT_PENDING: pb.OBJECT_STATE_PROGRESSING,
    pb.VERDICT_REJECTED: pb.OBJECT_STATE_FAILED,
    pb.VERDICT_FAILED: pb.OBJECT_STATE_FAILED,
}
# What an older agent meant by each state.
_FROM_LEGACY = {
    pb.OBJECT_STATE_READY: pb.VERDICT_PROGRAMMED,
    pb.OBJECT_STATE_PROGRESSING: pb.VERDICT_PENDING,
    pb.OBJECT_STATE_FAILED: pb.VERDICT_FAILED,
}


def object_status(name: str, version: str, verdict: pb.Verdict, message: str = "",
                  observed: Mapping[str, str] | None = None) -> pb.ObjectStatus:
    """The status of resource `name` as planned from resource version `version`, with both fields set."""
    return pb.ObjectStatus(name=name, resource_version=version, verdict=verdict, state=_LEGACY_STATE[verdict],
                           message=message, observed=dict(observed or {}))


def verdict_of(status: pb.ObjectStatus) -> pb.Verdict:
    """The verdict a status carries; from `state` when an older agent sent no verdict (UNSPECIFIED if neither)."""
    if status.verdict != pb.VERDICT_UNSPECIFIED:
        return status.verdict
    return _FROM_LEGACY.get(status.state, pb.VERDICT_UNSPECIFIED)
