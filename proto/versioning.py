"""Content-hash versions of the node-state contract, computed identically by controller and agent.

A resource's version hashes its payload; a type's version hashes the sorted (name, resource version)
pairs of the complete set. The agent recomputes the set version after applying a delta and treats a
mismatch as a broken stream (it reconnects and re-subscribes with the versions it holds).
Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from google.protobuf import any_pb2

EMPTY = ""  # version of "nothing applied yet"
_LENGTH = 16  # hex digits kept; 64 bits are plenty to tell versions of one node's set apart


def resource_version(body: any_pb2.Any) -> str:
    """Version of one payload: hash of its type URL and its deterministic serialisation."""
    digest = hashlib.sha256(body.type_url.encode())
    digest.update(b"\0")
    digest.update(body.value)
    return digest.hexdigest()[:_LENGTH]


def set_version(resource_versions: Mapping[str, str]) -> str:
    """Version of a complete set of resources of one type (name -> resource version)."""
    digest = hashlib.sha256(b"dpf.v1.set\n")
    for name in sorted(resource_versions):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(resource_versions[name].encode())
        digest.update(b"\n")
    return digest.hexdigest()[:_LENGTH]


def pack(message: object) -> any_pb2.Any:
    """Pack a payload message into an Any with a deterministic serialisation (stable versions)."""
    body = any_pb2.Any()
    body.type_url = f"type.googleapis.com/{message.DESCRIPTOR.full_name}"  # type: ignore[attr-defined]
    body.value = message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return body


def type_url(message_class: type) -> str:
    """The type URL that names a payload message class, e.g. type.googleapis.com/dpf.v1.ServiceInterface."""
    return f"type.googleapis.com/{message_class.DESCRIPTOR.full_name}"  # type: ignore[attr-defined]
