"""A snapshot: the complete, internally consistent set of one resource type for one node, versioned by
content hash (dpf.proto.versioning). Pure: built from payload messages, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf import any_pb2

from dpf.proto import versioning


class InconsistentSnapshot(ValueError):
    """A snapshot that must not be published: duplicate names or payloads of the wrong type."""


@dataclass(frozen=True)
class Resource:
    name: str
    version: str
    body: any_pb2.Any


@dataclass(frozen=True)
class Snapshot:
    type_url: str
    version: str
    resources: Mapping[str, Resource]

    @classmethod
    def build(cls, type_url: str, items: Iterable[tuple[str, object]]) -> Snapshot:
        """From (name, payload message) pairs; raises InconsistentSnapshot on duplicates or wrong types."""
        resources: dict[str, Resource] = {}
        for name, message in items:
            body = versioning.pack(message)
            if body.type_url != type_url:
                raise InconsistentSnapshot(f"resource {name!r} is a {body.type_url}, snapshot type is {type_url}")
            if name in resources:
                raise InconsistentSnapshot(f"resource {name!r} appears twice in the {type_url} snapshot")
            resources[name] = Resource(name, versioning.resource_version(body), body)
        return cls.of(type_url, resources)

    @classmethod
    def of(cls, type_url: str, resources: Mapping[str, Resource]) -> Snapshot:
        version = versioning.set_version({n: r.version for n, r in resources.items()})
        return cls(type_url, version, MappingProxyType(dict(sorted(resources.items()))))

    @classmethod
    def empty(cls, type_url: str) -> Snapshot:
        return cls.of(type_url, {})

    def resource_versions(self) -> dict[str, str]:
        return {name: r.version for name, r in self.resources.items()}

    def delta(self, known: Mapping[str, str]) -> tuple[list[Resource], list[str]]:
        """Resources to send and names to remove for an agent that holds `known` (name -> version)."""
        changed = [r for name, r in self.resources.items() if known.get(name) != r.version]
        removed = sorted(name for name in known if name not in self.resources)
        return changed, removed
