"""The flasher (upstream's DMS / bfb-install role): one install attempt into one rshim.

`echo "DISPLAY_LEVEL 2" > misc` (so `misc` shows the DPU's boot log), then the BFB file and the bf.cfg as ONE
stream into `boot` (as `cat image.bfb bf.cfg > boot` would), as fast as the device takes it: `sendfile` moves
the file's pages into the pipe without a copy through user space, in writes as large as the device's
buffer; the device's back-pressure is the only pacing. Then `misc` is watched for the outcome:

- ` ERR[...]: <why>` after the stream → FAILED with that line (a bad image, a truncated stream);
- ` INFO[MISC]: DPU is ready` after ` INFO[MISC]: Installation finished` of the complete stream → DONE;
- ` INFO[MISC]: DPU is ready` without it → FAILED: the DPU was reset or power-cycled mid-install (e.g. by
  the reboot of a host whose other DPU finished first) and booted its previous image;
- neither within the timeout, counted from the stream's start (a stalled device, a DPU that never boots)
  → FAILED naming the timeout and the last log line.

The stream is complete only once the device has taken every byte (the pipe is drained, FIONREAD 0) and the
writer has closed it: until then the log may still be the previous boot's, so no outcome is read before
that. Cancelling (`cancel` set) stops the stream at once and closes it: the device sees a truncated
stream and refuses it, which is what must happen to half an image. Runs on a thread of its own; progress
goes to `on_progress` at most every `progress_interval` seconds.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpf.proto.v1 import provisioning_pb2 as ppb

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes per sendfile call: the kernel moves what fits in the device's buffer
LOG_LINES = 20
MISC_POLL_SECONDS = 0.2
OPEN_RETRY_SECONDS = 10.0
READY_LINE = "DPU is ready"
INSTALLED_LINE = "Installation finished"  # the BFB's installer, before it reboots into what it installed
LOG_BANNER = "Log Messages"
SHOW_LOG_SECONDS = 5.0


@dataclass(frozen=True)
class FlashProgress:
    state: int  # ppb.InstallState
    bytes_sent: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    eta_seconds: float = 0.0
    log: tuple[str, ...] = ()
    error: str = ""

    def to_proto(self, install_id: str) -> ppb.InstallStatus:
        return ppb.InstallStatus(id=install_id, state=self.state, bytes_sent=self.bytes_sent,  # type: ignore[arg-type]
                                 bytes_total=self.bytes_total, rate=self.rate, eta_seconds=self.eta_seconds,
                                 log=list(self.log), error=self.error)


class Cancelled(Exception):
    """The flash was cancelled (the resource went away, the agent stops)."""


def misc_log(text: str) -> list[str]:
    """The log lines of a `misc` snapshot (shown below the "Log Messages" banner at DISPLAY_LEVEL 2)."""
    marker = LOG_BANNER + "\n"
    if marker not in text:
        return []
    return [line for line in text.split(marker, 1)[1].split("\n", 1)[-1].splitlines() if line.strip()]


@dataclass
class Flasher:
    rshim: Path
    image: Path
    bf_cfg: bytes
    timeout: float
    cancel: threading.Event
    on_progress: Callable[[FlashProgress], None] = lambda _p: None
    progress_interval: float = 0.5
    _progress: FlashProgress = field(default_factory=lambda: FlashProgress(ppb.INSTALL_STATE_FLASHING))
    _started: float = 0.0
    _reported_at: float = 0.0
    _shown_at: float = 0.0

    @property
    def boot(self) -> Path:
        return self.rshim / "boot"

    @property
    def misc(self) -> Path:
        return self.rshim / "misc"

    def run(self) -> FlashProgress:
        """Flash; returns the final progress (DONE or FAILED). Raises Cancelled."""
        total = self.image.stat().st_size + len(self.bf_cfg)
        self._progress = FlashProgress(ppb.INSTALL_STATE_FLASHING, 0, total)
        self._started = time.monotonic()
        self._show_log()
        self._report(force=True)
        try:
            self._stream()
        except TimeoutError as exc:
            return self._finish(ppb.INSTALL_STATE_FAILED, str(exc))
        except OSError as exc:
            return self._finish(ppb.INSTALL_STATE_FAILED, f"writing {self.boot} failed: {exc}")
        self._progress = replace(self._progress, state=ppb.INSTALL_STATE_BOOTING, eta_seconds=0.0)
        self._report(force=True)
        return self._watch_boot()

    def _show_log(self) -> None:
        """`echo "DISPLAY_LEVEL 2" > misc` and wait (briefly) until misc shows the log: a setting lost on the way
        (the device busy, rshim restarted) would leave the boot's outcome unreadable."""
        deadline = time.monotonic() + SHOW_LOG_SECONDS
        while True:
            self.misc.write_text("DISPLAY_LEVEL 2\n")
            self._shown_at = time.monotonic()
            for _ in range(10):
                if LOG_BANNER in self.misc.read_text(errors="replace"):
                    return
                self._check(wait=0.05)
            if time.monotonic() > deadline:
                log.warning("%s does not show the boot log after DISPLAY_LEVEL 2; streaming anyway", self.misc)
                return

    # ---- the stream ---------------------------------------------------------------------------------------
    def _open_boot(self) -> int:
        # Non-blocking: a stalled device must not hold the thread beyond the next cancel/timeout check.
        deadline = time.monotonic() + OPEN_RETRY_SECONDS
        while True:
            try:
                return os.open(self.boot, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: a FIFO with no reader yet (the device is between streams)
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
            self._check(wait=0.05)

    def _stream(self) -> None:
        fd = self._open_boot()
        try:
            with open(self.image, "rb") as image:
                size = os.fstat(image.fileno()).st_size
                self._send_file(fd, image.fileno(), size)
            self._send_bytes(fd, self.bf_cfg)
            self._drain(fd)
        finally:
            os.close(fd)  # end of stream (complete, or truncated on purpose when cancelled/failed)

    def _send_file(self, fd: int, source: int, size: int) -> None:
        offset = 0
        use_sendfile = True
        while offset < size:
            try:
                if use_sendfile:
                    n = os.sendfile(fd, source, offset, min(CHUNK, size - offset))
                else:
                    n = os.write(fd, os.pread(source, min(1 << 20, size - offset), offset))
            except BlockingIOError:
                self._wait_writable(fd)
                continue
            except OSError as exc:
                if use_sendfile and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    use_sendfile = False  # a device without splice support: plain large writes
                    continue
                raise
            if n == 0:
                raise OSError(errno.EIO, f"{self.image} shrank while streaming it")
            offset += n
            self._sent(n)

    def _send_bytes(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                self._wait_writable(fd)
                continue
            view = view[n:]
            self._sent(n)

    def _drain(self, fd: int) -> None:
        """Wait until the device has taken every byte (a pipe's FIONREAD; a character device has none)."""
        buf = bytearray(4)
        while True:
            try:
                fcntl.ioctl(fd, termios.FIONREAD, buf)
            except OSError:
                return
            if struct.unpack("i", buf)[0] == 0:
                return
            self._check(wait=0.02)

    def _wait_writable(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while not poller.poll(100):
            self._check()

    def _sent(self, n: int) -> None:
        p = self._progress
        sent = p.bytes_sent + n
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = sent / elapsed
        self._progress = replace(p, bytes_sent=sent, rate=rate, eta_seconds=(p.bytes_total - sent) / rate)
        self._check()
        self._report()

    def _check(self, wait: float = 0.0) -> None:
        """Raise Cancelled / TimeoutError when due; else wait up to `wait` seconds for a cancel."""
        if wait and self.cancel.wait(wait):
            raise Cancelled
        if self.cancel.is_set():
            raise Cancelled
        if time.monotonic() - self._started > self.timeout:
            p = self._progress
            raise TimeoutError(f"install timed out after {self.timeout:.0f}s with {p.bytes_sent} of "
                               f"{p.bytes_total} bytes taken by the device (stalled?)")

    # ---- the boot -----------------------------------------------------------------------------------------
    def _watch_boot(self) -> FlashProgress:
        while True:
            lines = self._read_log()
            for line in lines:
                if "ERR[" in line:
                    return self._finish(ppb.INSTALL_STATE_FAILED, f"the DPU refused the install: {line.strip()}")
            finished = next((i for i, line in enumerate(lines) if INSTALLED_LINE in line), None)
            if finished is not None and any(READY_LINE in line for line in lines[finished:]):
                return self._finish(ppb.INSTALL_STATE_DONE, "")
            if any(READY_LINE in line for line in lines):
                # Booted, but not from this install: the DPU was reset or power-cycled mid-install (another
                # DPU's host reboot, a person); it runs what it had before.
                return self._finish(ppb.INSTALL_STATE_FAILED, f"the DPU booted without finishing the install "
                                    f"(no {INSTALLED_LINE!r} before {READY_LINE!r}: reset or power-cycled "
                                    f"mid-install?); it runs its previous image")
            try:
                self._check(wait=MISC_POLL_SECONDS)
            except TimeoutError:
                last = lines[-1].strip() if lines else "none"
                return self._finish(ppb.INSTALL_STATE_FAILED, f"the DPU did not report {READY_LINE!r} within "
                                    f"{self.timeout:.0f}s of the stream's start (last boot log line: {last})")

    def _read_log(self) -> list[str]:
        try:
            text = self.misc.read_text(errors="replace")
        except OSError:
            return list(self._progress.log)
        if LOG_BANNER not in text and time.monotonic() - self._shown_at > 1.0:
            self.misc.write_text("DISPLAY_LEVEL 2\n")  # lost, or reset with the device: ask again
            self._shown_at = time.monotonic()
        lines = misc_log(text)
        self._progress = replace(self._progress, log=tuple(lines[-LOG_LINES:]))
        self._report()
        return lines

    def _finish(self, state: int, error: str) -> FlashProgress:
        if state == ppb.INSTALL_STATE_FAILED:
            self._read_log()  # the last lines tell the story
        self._progress = replace(self._progress, state=state, error=error, eta_seconds=0.0)
        log.info("flash of %s into %s: %s %s", self.image.name, self.rshim,
                 ppb.InstallState.Name(state), error)
        return self._progress

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported_at < self.progress_interval:
            return
        self._reported_at = now
        if not force and self._progress.state == ppb.INSTALL_STATE_FLASHING:
            self._refresh_log()
        self.on_progress(self._progress)

    def _refresh_log(self) -> None:
        try:
            lines = misc_log(self.misc.read_text(errors="replace"))
        except OSError:
            return
        self._progress = replace(self._progress, log=tuple(lines[-LOG_LINES:]))
