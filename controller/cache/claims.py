"""Who keeps a contested resource (an OVS port, a chain port selector, an interface in a chain): the object
that has existed longest, by `metadata.creationTimestamp`, then `uid` as the tie-break within a second.

Never the name: a newcomer named to sort first must not take a port from a running chain. Age is what the
apiserver recorded, so every controller (a restarted one, a new leader) decides the same way without any
state of its own. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Obj = Mapping[str, Any]
_NO_TIMESTAMP = "~"  # sorts after every RFC 3339 timestamp: an object without one is never the elder


def age_key(obj: Obj) -> tuple[str, str, str, str]:
    """Sort key, oldest first. The namespace/name only orders objects the apiserver has not stamped (tests)."""
    meta = obj["metadata"]
    return (meta.get("creationTimestamp") or _NO_TIMESTAMP, meta.get("uid") or "", meta.get("namespace", ""),
            meta["name"])


def oldest_first(objects: Iterable[Obj]) -> list[Obj]:
    return sorted(objects, key=age_key)


def held_since(obj: Obj) -> str:
    """How a message names the holder's age."""
    stamp = obj["metadata"].get("creationTimestamp")
    return f"created {stamp}" if stamp else "created earlier"
