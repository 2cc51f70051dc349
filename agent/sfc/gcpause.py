"""Hold the cyclic garbage collector off while a full resync builds its plans, then let it run again.

A full resync of 1,000 chains creates ~50,000 long-lived container objects (typed flows, plans, the replica's
rows); each generation-2 collection that the allocations trigger midway walks every object already alive,
so a resync pays for its own growth several times over (most of the first plan's extra cost over the old
string flows). Reference counting still frees everything acyclic during the pause; cycles made meanwhile
wait for the collection that follows it. Process-wide and re-entrant: the collector is enabled again when
the last pause ends, and only if it was enabled when the first began.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
