"""The thread that sees writes to the emulated device files (inotify, through libc), shared by every
emulated host of a process: inotify instances are few (128 per user by default, counted across processes).

A plain filesystem cannot intercept a write the way sysfs or a character device does, so the emulator learns
of it afterwards: inotify reports IN_CLOSE_WRITE when the writer closes the file, and the registered handler
applies the write (and rewrites the file with what the real device would then show). The writer's own
`write()` always succeeds; see docs/emulator.md for what that changes against real hardware.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
_EVENT = struct.Struct("iIII")
_libc = ctypes.CDLL(None, use_errno=True)


class FileWatcher:
    """Calls `handler(name)` after a writer closes a watched file (or a file in a watched directory)."""

    _shared: FileWatcher | None = None
    _users = 0
    _shared_lock = threading.Lock()

    @classmethod
    def acquire(cls) -> FileWatcher:
        """The process's watcher, started on first use; pair with `release()`."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls("shared")
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls) -> None:
        """Drop one user; the last one stops the thread."""
        with cls._shared_lock:
            cls._users -= 1
            if cls._users == 0 and cls._shared is not None:
                cls._shared.close()
                cls._shared = None

    def __init__(self, name: str) -> None:
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._handlers: dict[int, Callable[[str], None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"emulator-watch-{name}", daemon=True)
        self._thread.start()

    def watch(self, path: Path, handler: Callable[[str], None]) -> int:
        """Watch a file or a directory (then the handler is called with the closed file's name)."""
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), IN_CLOSE_WRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self._handlers[wd] = handler
        return wd

    def unwatch(self, wd: int) -> None:
        self._handlers.pop(wd, None)
        _libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly when the path is gone already

    def _run(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._fd not in ready:
                continue
            try:
                raw = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            pos = 0
            while pos < len(raw):
                wd, _mask, _cookie, length = _EVENT.unpack_from(raw, pos)
                name = raw[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0").decode()
                pos += _EVENT.size + length
                handler = self._handlers.get(wd)
                if handler is None:
                    continue
                try:
                    handler(name)
                except Exception:  # a bad write must not kill the host's watcher
                    log.exception("emulator: handling a write failed")

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        for fd in (self._fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
