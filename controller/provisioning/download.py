"""Download one BFB file: stream an http(s) URL into a hidden partial file next to its destination, fsync it,
chmod 0644 and rename it into place atomically, so a DMS pod reading the shared volume never sees half a file.

Caller: the BFB reconciler (`controller/reconcilers/bfb.py`), which owns the tasks, retries and phases. This
module never talks to the apiserver and touches no file but its own partial and its destination (and, when
asked, leftover partials of the same file name). Disk work runs in threads: a 1.5 GB image must not stall the
event loop that renews the leader lease.

Failure (any status but 200, a connection error, no bytes for `stall_timeout`, a body shorter than its
Content-Length, a disk error) raises DownloadError whose message names the URL and the cause; the partial is
removed on every failure and on cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
READ_CHUNK = 1 << 20  # bytes taken from the socket at a time
WRITE_BATCH = 8 << 20  # bytes handed to the writer thread at a time
PROGRESS_SECONDS = 10.0  # a long download logs its progress at least this often ...
PROGRESS_TENTHS_FROM = 100 << 20  # ... and at every 10 % when it is at least this big
USER_AGENT = "dpf-controller"

T = TypeVar("T")


class DownloadError(Exception):
    """The download failed; the message says which URL and why (it becomes the FailedDownload Event note)."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    seconds: float


def partial_path(directory: Path, file_name: str, uid: str, attempt: str) -> Path:
    """Where one download attempt of `file_name` for the object `uid` is written before the rename (hidden).
    `attempt` makes the path unique: a replica that lost leadership without noticing must never rename
    a partial that the new leader is still writing."""
    return directory / f".{file_name}.{uid}.{attempt}{PARTIAL_SUFFIX}"


def partials_of(directory: Path, file_name: str) -> list[Path]:
    """Every partial of `file_name` in `directory` (ours, from any object and any earlier process)."""
    prefix = f".{file_name}."
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if n.startswith(prefix) and n.endswith(PARTIAL_SUFFIX))


def remove_file(path: Path) -> bool:
    """Unlink `path` if it exists; True if something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


async def download(url: str, destination: Path, partial: Path, *, stall_timeout: float, label: str = "",
                   on_bytes: Callable[[int], None] | None = None,
                   progress_every: float = PROGRESS_SECONDS) -> Downloaded:
    """GET `url` into `partial`, then atomically rename it to `destination` (mode 0644). Progress is logged
    every `progress_every` seconds (and at every 10 % of a big file)."""
    label = label or destination.name
    if not await asyncio.to_thread(destination.parent.is_dir):
        raise DownloadError(f"BFB directory {destination.parent} does not exist or is not a directory "
                            f"(mount the BFB volume there, or pass --bfb-dir)")
    started = time.monotonic()
    try:
        sink = await _in_thread(_Sink.open, partial)
    except OSError as exc:
        raise DownloadError(f"cannot create {partial}: {exc.strerror or exc}") from None
    try:
        await _fetch(url, sink, stall_timeout, _Progress(label, started, progress_every), on_bytes)
        await _in_thread(sink.commit, destination)
    except OSError as exc:
        raise DownloadError(f"writing {destination}: {exc.strerror or exc}") from None
    finally:
        sink.discard()  # after the commit this only closes; on any failure or cancellation it unlinks
    return Downloaded(destination, sink.size, sink.sha256.hexdigest(), time.monotonic() - started)


async def _fetch(url: str, sink: _Sink, stall_timeout: float, progress: _Progress,
                 on_bytes: Callable[[int], None] | None) -> None:
    # connect covers DNS, TCP and TLS; sock_read restarts with every byte received: together they are the stall
    # bound (a slow but moving download is never cut off, a silent one always is).
    timeout = aiohttp.ClientTimeout(total=None, connect=stall_timeout, sock_read=stall_timeout)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    try:
        # trust_env: HTTP(S)_PROXY / NO_PROXY are honoured, as upstream's Go default client does.
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True, headers=headers) as session, \
                session.get(url) as response:
            if response.status != 200:
                raise DownloadError(f"GET {url}: {response.status} {response.reason or ''}".rstrip())
            encoded = "Content-Encoding" in response.headers
            progress.total = None if encoded else response.content_length
            batch = bytearray()
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                batch += chunk
                if on_bytes is not None:
                    on_bytes(len(chunk))
                progress.add(len(chunk))
                if len(batch) >= WRITE_BATCH:
                    data, batch = batch, bytearray()
                    await _in_thread(sink.write, data)
            if batch:
                await _in_thread(sink.write, batch)
    except aiohttp.ConnectionTimeoutError:
        raise DownloadError(f"GET {url}: no connection within {stall_timeout:g}s") from None
    except aiohttp.ServerTimeoutError:  # sock_read: nothing arrived for stall_timeout
        raise DownloadError(f"GET {url}: no data for {stall_timeout:g}s after {progress.received} bytes "
                            f"(stalled)") from None
    except aiohttp.ClientPayloadError:
        raise DownloadError(f"GET {url}: connection closed after {progress.received} of "
                            f"{_of(progress.total)} bytes") from None
    except aiohttp.InvalidURL:
        raise DownloadError(f"GET {url}: invalid URL") from None
    except aiohttp.ClientError as exc:
        raise DownloadError(f"GET {url}: {exc or type(exc).__name__}") from None
    if progress.total is not None and progress.received != progress.total:
        raise DownloadError(f"GET {url}: connection closed after {progress.received} of {progress.total} bytes")


def _of(total: int | None) -> str:
    return "an unknown number of" if total is None else str(total)


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a thread; if cancelled meanwhile, wait for that work to finish before the
    cancellation goes on (cleanup must not race a write or a rename still running in the thread)."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


@dataclass
class _Progress:
    label: str
    started: float
    every: float
    total: int | None = None
    received: int = 0
    logged_at: float = 0.0
    logged_tenth: int = 0

    def add(self, count: int) -> None:
        self.received += count
        now = time.monotonic()
        tenth = self.received * 10 // self.total if self.total else 0
        due = now - (self.logged_at or self.started) >= self.every
        if self.total and self.total >= PROGRESS_TENTHS_FROM and tenth > self.logged_tenth:
            due = True
        if not due or (self.total is not None and self.received >= self.total):
            return
        self.logged_at, self.logged_tenth = now, tenth
        elapsed = max(now - self.started, 1e-6)
        share = f"{self.received * 100 // self.total}% ({_mb(self.received)} of {_mb(self.total)})" \
            if self.total else _mb(self.received)
        log.info("BFB %s: downloaded %s in %.0fs, %.1f MB/s", self.label, share, elapsed,
                 self.received / elapsed / 1e6)


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


@dataclass
class _Sink:
    """The partial file being written (used from worker threads, one call at a time)."""

    path: Path
    fd: int | None
    size: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)
    committed: bool = False

    @classmethod
    def open(cls, path: Path) -> _Sink:
        return cls(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))

    def write(self, data: bytearray) -> None:
        assert self.fd is not None
        self.sha256.update(data)  # releases the GIL for large buffers
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)

    def commit(self, destination: Path) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        os.fchmod(self.fd, 0o644)  # whatever the umask: DMS pods read it as another user
        os.close(self.fd)
        self.fd = None
        os.rename(self.path, destination)
        self.committed = True
        directory = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if not self.committed:
            with contextlib.suppress(OSError):
                remove_file(self.path)
