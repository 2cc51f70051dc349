"""Crash-safe persistence of the node's IP leases: one JSON file, replaced atomically, checksummed.

Written by `dpf.agent.ipam.service` after every change and before an IP is handed out, so a crash
at any instant leaves either the old or the new file, never a torn one (`dpf.shared.atomic`).
On load the checksum is verified; a file that fails it raises `StoreCorrupt` rather than being
trusted, because a silently wrong lease table hands out duplicate IPs.
Never interprets the leases: that is the service's job.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dpf.shared import atomic

FORMAT = 1


class StoreCorrupt(Exception):
    """The lease file exists but cannot be trusted (bad JSON, wrong format or checksum)."""


def _digest(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps({"format": FORMAT, "checksum": _digest(data), "data": data}, sort_keys=True,
                      indent=1).encode()


def decode(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreCorrupt(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("data"), dict):
        raise StoreCorrupt(f"{path}: not a format-{FORMAT} lease file")
    if doc.get("checksum") != _digest(doc["data"]):
        raise StoreCorrupt(f"{path}: checksum mismatch (file was modified or torn)")
    return doc["data"]


class LeaseFile:
    """The file at `path` (its directory is created 0700: leases name pods)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The stored data; {} when there is no file yet. Raises StoreCorrupt."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        return decode(raw, self.path)

    def quarantine(self) -> Path:
        """Move a corrupt file aside (kept for inspection) so the agent can start from recovery."""
        return atomic.quarantine(self.path, f"corrupt-{os.getpid()}")

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_atomic(self.path, encode(data))

    def remove_temp(self) -> None:
        atomic.remove_temp(self.path)
