"""Download one BFB file: stream an http(s) URL into a hidden partial file next to its destination, fsync it,
chmod 0644 and rename it into place atomically, so a DMS pod reading the shared volume never sees half a file.

Caller: the BFB reconciler (`controller/reconcilers/bfb.py`), which owns the tasks, retries and phases. This
module never talks to the apiserver and touches no file but its own partial and its destination (and, when
asked, leftover partials of the same file name).

The transfer runs in a thread of its own, as curl does: blocking `recv_into` straight into a few large reusable
buffers (no per-chunk Python objects, no event-loop round trip per socket read), while two more threads hash
(sha256) and write the buffers already received, side by side; every one of those calls releases the GIL, so the
event loop that renews the leader lease keeps running. HTTP itself is the standard library's (`http.client`: TLS
with the system trust store, HTTP(S)_PROXY / NO_PROXY from the environment as upstream's Go client, redirects
followed). Cancelling the awaiting task shuts the socket down and waits for the thread before the cancellation
goes on.

Failure (any status but 200, a connection error, no bytes for `stall_timeout`, a body shorter than its
Content-Length, a disk error) raises DownloadError whose message names the URL and the cause; the partial is
removed on every failure and on cancellation.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
READ_BUFFER = 4 << 20  # bytes received into one buffer before it is hashed and written
BUFFERS = 3  # one being received while the others are hashed and written
SMALL_READ = 256 << 10  # read size for bodies without a Content-Length (chunked): rare for a BFB
MAX_REDIRECTS = 10
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
    every `progress_every` seconds (and at every 10 % of a big file); `on_bytes` is called on the event loop
    with the count of bytes received since its last call (once per buffer)."""
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
        report = None
        if on_bytes is not None:
            loop = asyncio.get_running_loop()
            report = lambda count: loop.call_soon_threadsafe(on_bytes, count)  # noqa: E731
        transfer = _Transfer(url, sink, stall_timeout, _Progress(label, started, progress_every), report)
        future = asyncio.ensure_future(asyncio.to_thread(transfer.run))
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            transfer.cancel()  # unblocks the thread's socket read; it stops before its next write
            with contextlib.suppress(Exception):
                await future
            raise
        await _in_thread(sink.commit, destination)
    except OSError as exc:
        raise DownloadError(f"writing {destination}: {exc.strerror or exc}") from None
    finally:
        sink.discard()  # after the commit this only closes; on any failure or cancellation it unlinks
    return Downloaded(destination, sink.size, sink.sha256.hexdigest(), time.monotonic() - started)


class _Cancelled(Exception):
    pass


class _Transfer:
    """One GET (following redirects) into a _Sink, run by `run` in a worker thread."""

    def __init__(self, url: str, sink: _Sink, stall_timeout: float, progress: _Progress,
                 report: Callable[[int], object] | None) -> None:
        self.url = url
        self.sink = sink
        self.stall_timeout = stall_timeout
        self.progress = progress
        self.report = report
        self.unreported = 0
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        url = self.url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                conn, response = self._request(url)
                try:
                    if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                        url = urllib.parse.urljoin(url, response.getheader("Location", ""))
                        continue
                    if response.status != 200:
                        raise DownloadError(f"GET {self.url}: {response.status} {response.reason or ''}".rstrip())
                    self._body(response)
                    return
                finally:
                    with self._lock:
                        self._sock = None
                    conn.close()
            raise DownloadError(f"GET {self.url}: more than {MAX_REDIRECTS} redirects")
        except _Cancelled:
            return
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if self._cancelled.is_set():
                return
            raise self._error(exc) from None
        finally:
            self._flush_report()

    def _request(self, url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
            parts = parts._replace(scheme="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"GET {self.url}: invalid URL")
        host = parts.hostname
        port = port or (443 if parts.scheme == "https" else 80)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
        conn: http.client.HTTPConnection
        if proxy:
            proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            auth = {}
            if proxied.username:
                token = f"{urllib.parse.unquote(proxied.username)}:{urllib.parse.unquote(proxied.password or '')}"
                auth = {"Proxy-Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(proxied.hostname or "", proxied.port or 3128,
                                                   timeout=self.stall_timeout, context=ssl.create_default_context())
                conn.set_tunnel(host, port, headers=auth)
            else:
                conn = http.client.HTTPConnection(proxied.hostname or "", proxied.port or 3128,
                                                  timeout=self.stall_timeout)
                target = urllib.parse.urlunsplit(parts._replace(fragment=""))
                headers.update(auth)
        elif parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.stall_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.stall_timeout)
        try:
            try:
                conn.connect()
            except TimeoutError:
                raise DownloadError(f"GET {self.url}: no connection within {self.stall_timeout:g}s") from None
            except ssl.SSLError:
                raise
            except OSError as exc:
                raise DownloadError(f"GET {self.url}: Cannot connect to host {conn.host}:{conn.port} "
                                    f"[{exc.strerror or exc}]") from None
            with self._lock:
                if self._cancelled.is_set():
                    raise _Cancelled()
                self._sock = conn.sock
            conn.request("GET", target, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _body(self, response: http.client.HTTPResponse) -> None:
        progress = self.progress
        encoded = response.getheader("Content-Encoding") is not None
        length = None if response.chunked else response.length
        reader = response.fp  # the socket's BufferedReader: what http.client already buffered comes first
        assert reader is not None
        progress.total = None if encoded else length
        # Hashing and writing each take a thread of their own (both in order, both releasing the GIL): done one
        # after the other they cost more than the receive itself, and became the transfer's pace.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bfb-write") as writer, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bfb-hash") as hasher:
            ring = [memoryview(bytearray(READ_BUFFER if length else SMALL_READ)) for _ in range(BUFFERS)]
            pending: list[tuple[concurrent.futures.Future[None], ...]] = [()] * BUFFERS
            slot = 0
            while True:
                for done in pending[slot]:
                    done.result()  # the buffer is free again (and a disk error surfaces here)
                buffer, filled = ring[slot], 0
                if length is None:
                    filled = response.readinto(buffer)
                    self._received(filled)
                else:
                    want = min(len(buffer), length - progress.received)
                    while filled < want:
                        count = reader.readinto1(buffer[filled:want])  # one recv, into our buffer
                        if not count:
                            break
                        filled += count
                        self._received(count)
                if self._cancelled.is_set():
                    raise _Cancelled()
                if filled:
                    piece = buffer[:filled]
                    pending[slot] = (hasher.submit(self.sink.hash, piece), writer.submit(self.sink.write, piece))
                    slot = (slot + 1) % BUFFERS
                    self._flush_report()
                if length is None and not filled:
                    break
                if length is not None and (progress.received >= length or filled < want):
                    break
            for futures in pending:
                for done in futures:
                    done.result()
        if length is not None and progress.received != length:
            raise http.client.IncompleteRead(b"", length - progress.received)

    def _received(self, count: int) -> None:
        self.progress.add(count)
        self.unreported += count

    def _flush_report(self) -> None:
        if self.report is not None and self.unreported:
            self.report(self.unreported)
        self.unreported = 0

    def _error(self, exc: BaseException) -> DownloadError:
        received, total = self.progress.received, self.progress.total
        if isinstance(exc, TimeoutError):  # socket.timeout: nothing arrived for stall_timeout
            return DownloadError(f"GET {self.url}: no data for {self.stall_timeout:g}s after {received} bytes "
                                 f"(stalled)")
        if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError)):
            return DownloadError(f"GET {self.url}: connection closed after {received} of {_of(total)} bytes")
        if isinstance(exc, ssl.SSLError):
            return DownloadError(f"GET {self.url}: TLS: {exc.reason or exc}")
        if isinstance(exc, OSError) and exc.filename is None and not isinstance(exc, _DiskError):
            return DownloadError(f"GET {self.url}: {exc.strerror or exc}")
        if isinstance(exc, http.client.HTTPException):
            return DownloadError(f"GET {self.url}: {type(exc).__name__}: {exc}")
        raise exc


class _DiskError(OSError):
    """An OSError from writing the partial file (re-raised as is: the caller names the destination)."""


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

    def hash(self, data: memoryview) -> None:
        self.sha256.update(data)  # releases the GIL for large buffers

    def write(self, data: memoryview) -> None:
        assert self.fd is not None
        view = data
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise _DiskError(exc.errno, exc.strerror) from None
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
