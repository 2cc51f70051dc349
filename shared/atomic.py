"""Crash-safe whole-file replacement: temp file, fsync, rename, fsync of the directory.

A crash at any instant leaves either the old or the new file, never a torn one. The two on-disk stores of
the agents (the runtime's applied state, the IPAM leases) both write through `write_atomic`; what they
write and how they check it on load is theirs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (file mode `mode`); the parent directory must exist."""
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temp(path: Path) -> None:
    """Remove a temp file a crash left beside `path` (harmless if none)."""
    with contextlib.suppress(FileNotFoundError):
        _temp_path(path).unlink()


def quarantine(path: Path, suffix: str) -> Path:
    """Move an unusable file aside (kept for inspection) so its owner can start afresh; returns the new path."""
    target = path.with_name(f"{path.name}.{suffix}")
    os.replace(path, target)
    return target
