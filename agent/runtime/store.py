"""The last applied state per resource type, on disk: what an agent restarted without a controller
re-asserts, and the versions it presents when it re-subscribes.

One JSON file per type (payloads base64), written atomically (`dpf.shared.atomic`). A corrupt file is
moved aside and treated as empty (the controller then sends full state).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import any_pb2

from dpf.proto import versioning
from dpf.shared.atomic import quarantine, write_atomic

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class StoredResource:
    version: str
    body: any_pb2.Any


@dataclass
class TypeState:
    type_url: str
    version: str = versioning.EMPTY
    resources: dict[str, StoredResource] = field(default_factory=dict)

    def resource_versions(self) -> dict[str, str]:
        return {name: r.version for name, r in self.resources.items()}


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, type_url: str) -> Path:
        short = type_url.rsplit("/", 1)[-1]
        digest = hashlib.sha256(type_url.encode()).hexdigest()[:8]
        return self.directory / f"{short}-{digest}.json"

    def load(self, type_url: str) -> TypeState:
        path = self._path(type_url)
        try:
            document = json.loads(path.read_text())
            if document.get("format") != FORMAT or document.get("typeUrl") != type_url:
                raise ValueError(f"unexpected format/type in {path}")
            resources = {}
            for name, item in document["resources"].items():
                body = any_pb2.Any(type_url=item["typeUrl"], value=base64.b64decode(item["value"]))
                resources[name] = StoredResource(item["version"], body)
            state = TypeState(type_url, document["version"], resources)
            if versioning.set_version(state.resource_versions()) != state.version:
                raise ValueError(f"{path}: stored versions do not add up to {state.version}")
            return state
        except FileNotFoundError:
            return TypeState(type_url)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = quarantine(path, "corrupt")
            log.error("state file %s unusable (%s); moved to %s, starting from nothing", path, exc, aside)
            return TypeState(type_url)

    def save(self, state: TypeState) -> None:
        path = self._path(state.type_url)
        document = {
            "format": FORMAT, "typeUrl": state.type_url, "version": state.version,
            "resources": {name: {"version": r.version, "typeUrl": r.body.type_url,
                                 "value": base64.b64encode(r.body.value).decode()}
                          for name, r in sorted(state.resources.items())},
        }
        write_atomic(path, json.dumps(document, separators=(",", ":")).encode())
