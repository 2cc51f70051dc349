"""One emulated rshim device directory: `boot` (a FIFO read at a dialable rate), `misc`, `console`, the holder.

- `boot`: a named pipe. A reader thread consumes each stream (one writer's open .. close) at the device's
  rate, so a slow or stalled device blocks the writer as the real one does (the pipe buffer, 64 KiB, or
  1 MiB when the rate is unlimited, is the only slack). Bytes go through `StreamVerifier`.
- `misc`: a regular file, rewritten atomically (rename) whenever it changes, so a reader always sees one
  consistent snapshot: the key/value header as rshim prints it and, at `DISPLAY_LEVEL 2`, the log.
  Commands are written into it as on the real device (`echo "SW_RESET 1" > misc`) and applied when the
  writer closes it.
- `console`: the DPU's console output, appended.
- Holder: real rshim serves a device to one process. Here a claimant takes `flock(LOCK_EX|LOCK_NB)` on the
  rshim directory and writes its identity to `<dir>/.holder`; a second claimant gets EWOULDBLOCK and reads
  who holds it (`claim`, `holder`). The lock dies with its process, so a crashed holder never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dpf.lab.emulator.bfb import StreamOutcome, StreamVerifier

F_SETPIPE_SZ = 1031
READ_BUFFER = 1 << 20
LOG_LINES = 1000
RECENT_MISC_FILES = 4
_SEPARATOR = "---------------------------------------"


@dataclass
class StageTimings:
    """Seconds spent before each boot stage's lines appear."""

    bl2: float = 0.05
    bl31: float = 0.05
    uefi: float = 0.05
    install: float = 0.2  # "Ubuntu installation started" .. "Installation finished"
    linux: float = 0.1  # firmware done .. "Linux up"
    ready: float = 0.05  # "Linux up" .. "DPU is ready"


@dataclass
class Faults:
    """Dialable per DPU at run time (`EmulatedDpu.set_faults`)."""

    stall: bool = False  # boot stops reading: writers block once the pipe is full
    corrupt: bool = False  # the next stream's payload is garbled on the way in: checksum mismatch, no boot
    never_boots: bool = False  # installs, reboots, but never reaches "Linux up"
    rate: float | None = None  # bytes/s the device accepts; None: as fast as it can
    timings: StageTimings = field(default_factory=StageTimings)


@dataclass
class StreamRecord:
    """One boot stream as the device saw it."""

    started: float
    bytes: int = 0
    ended: float | None = None
    outcome: StreamOutcome | None = None


@dataclass
class MiscSettings:
    display_level: int = 0
    boot_mode: int = 1
    boot_timeout: int = 100
    usb_timeout: int = 40
    drop_mode: int = 0


class Rshim:
    """The files of `/dev/rshim<N>/` and the boot stream reader; the DPU decides what the streams mean."""

    def __init__(self, directory: Path, dev_name: str, dev_info: str, opn: str, faults: Faults,
                 on_stream_start: Callable[[], None], on_stream_end: Callable[[StreamOutcome], None],
                 on_reset: Callable[[], None]) -> None:
        self.directory = directory
        self.dev_name = dev_name
        self.dev_info = dev_info
        self.opn = opn
        self.faults = faults
        self.settings = MiscSettings()
        self.powered = True
        self.streams: list[StreamRecord] = []
        self._on_stream_start = on_stream_start
        self._on_stream_end = on_stream_end
        self._on_reset = on_reset
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._misc_lock = threading.Lock()
        self._rendered = ""
        self._recent: deque[list] = deque()  # [fd, content we last saw] of the latest misc files
        self._up_since = time.monotonic()
        self._cv = threading.Condition()
        self._stopping = False
        directory.mkdir(parents=True)
        os.mkfifo(self.boot)
        self.console.write_text("")
        self._write_misc()
        self._reader = threading.Thread(target=self._read_streams, name=f"emulator-{directory.name}-boot",
                                        daemon=True)
        self._reader.start()

    @property
    def boot(self) -> Path:
        return self.directory / "boot"

    @property
    def misc(self) -> Path:
        return self.directory / "misc"

    @property
    def console(self) -> Path:
        return self.directory / "console"

    # --- dials -------------------------------------------------------------------------------------------

    def changed(self) -> None:
        """Wake the reader after a fault or power change."""
        with self._cv:
            self._cv.notify_all()

    @property
    def bytes_accepted(self) -> int:
        """Bytes of the current (or last) stream the device has taken from the pipe."""
        return self.streams[-1].bytes if self.streams else 0

    # --- misc ----------------------------------------------------------------------------------------------

    def log(self, line: str) -> None:
        with self._misc_lock:
            self._log.append(line)
            self._write_misc_locked()

    def clear_log(self) -> None:
        with self._misc_lock:
            self._log.clear()
            self._up_since = time.monotonic()
            self._write_misc_locked()

    def log_lines(self) -> list[str]:
        with self._misc_lock:
            return list(self._log)

    def append_console(self, text: str) -> None:
        with open(self.console, "a") as f:
            f.write(text)

    def render_misc(self) -> str:
        s = self.settings
        up = int(time.monotonic() - self._up_since)
        rows = [
            ("DISPLAY_LEVEL", f"{s.display_level} (0:basic, 1:advanced, 2:log)"),
            ("BF_MODE", "DPU mode"),
            ("BOOT_MODE", f"{s.boot_mode} (0:rshim, 1:emmc, 2:emmc-boot-swap)"),
            ("BOOT_TIMEOUT", f"{s.boot_timeout} (seconds)"),
            ("USB_TIMEOUT", f"{s.usb_timeout} (seconds)"),
            ("DROP_MODE", f"{s.drop_mode} (0:normal, 1:drop)"),
            ("SW_RESET", "0 (1: reset)"),
            ("DEV_NAME", self.dev_name),
            ("DEV_INFO", self.dev_info),
            ("OPN_STR", self.opn),
            ("UP_TIME", f"{up}(s)"),
            ("SECURE_NIC_MODE", "0 (0:no, 1:yes)"),
            ("FORCE_CMD", "0 (1: send Force command)"),
        ]
        text = "".join(f"{key:<16}{value}\n" for key, value in rows)
        if s.display_level >= 2:
            text += f"{_SEPARATOR}\n             Log Messages\n{_SEPARATOR}\n"
            text += "".join(f"{line}\n" for line in self._log)
        return text

    def _write_misc(self) -> None:
        with self._misc_lock:
            self._write_misc_locked()

    def _write_misc_locked(self) -> None:
        self._rendered = self.render_misc()
        tmp = self.directory / ".misc.new"
        tmp.write_text(self._rendered)
        os.replace(tmp, self.misc)
        # Keep the last few files open: a writer that opened `misc` just before a replace writes into a file
        # that no longer has the name, and its command must still be seen.
        self._recent.append([os.open(self.misc, os.O_RDONLY), self._rendered])
        while len(self._recent) > RECENT_MISC_FILES:
            os.close(self._recent.popleft()[0])

    def on_misc_write(self) -> None:
        """Apply commands a writer left in `misc` (`KEY VALUE` lines, as rshim's misc write accepts)."""
        reset = False
        with self._misc_lock:
            changed = False
            for entry in self._recent:
                text = os.pread(entry[0], 1 << 20, 0).decode(errors="replace")
                if text != entry[1]:
                    entry[1] = text  # seen: never applied twice
                    reset |= self._apply_commands(text)
                    changed = True
            if changed:
                self._write_misc_locked()
        if reset:
            self._on_reset()

    def _apply_commands(self, text: str) -> bool:
        """Apply the settings in `text`; True when it asks for a reset."""
        reset = False
        s = self.settings
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
                continue
            key, value = parts[0].upper(), int(parts[1])
            if key == "DISPLAY_LEVEL":
                s.display_level = value
            elif key == "BOOT_MODE":
                s.boot_mode = value
            elif key == "BOOT_TIMEOUT":
                s.boot_timeout = value
            elif key == "USB_TIMEOUT":
                s.usb_timeout = value
            elif key == "DROP_MODE":
                s.drop_mode = value
            elif key == "SW_RESET" and value == 1:
                reset = True
        return reset

    # --- boot stream ---------------------------------------------------------------------------------------

    def _read_streams(self) -> None:
        while not self._stopping:
            try:
                fd = os.open(self.boot, os.O_RDONLY)  # blocks until a writer opens the pipe
            except InterruptedError:
                continue
            try:
                if self._stopping:
                    return
                self._read_one(fd)
            finally:
                os.close(fd)

    def _read_one(self, fd: int) -> None:
        # The pipe is the device's only buffer: small when the rate is dialed so back-pressure is prompt.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, READ_BUFFER if self.faults.rate is None else 64 * 1024)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        buf = bytearray(READ_BUFFER)
        view = memoryview(buf)
        record: StreamRecord | None = None
        verifier = StreamVerifier()
        next_at = 0.0
        while True:
            with self._cv:
                # A stalled device stops reading, but not for a writer that has gone (POLLHUP: it gave up and closed):
                # the rest of that truncated stream is taken and refused now, as the real driver drops a closed
                # stream. Left in the pipe, it would run into the next writer's stream once the stall is lifted.
                while ((self.faults.stall and not _writer_gone(poller)) or not self.powered) and not self._stopping:
                    next_at = 0.0  # the pacing clock restarts after a pause
                    self._cv.wait(0.1)
            if self._stopping:
                return
            rate = self.faults.rate
            if rate:
                now = time.monotonic()
                if next_at > now:
                    with self._cv:
                        self._cv.wait(next_at - now)
                    continue  # re-check stall/stop/rate after the wait
            if not poller.poll(100):
                continue
            want = READ_BUFFER if not rate else int(min(READ_BUFFER, max(4096, rate / 50)))
            n = os.readv(fd, [view[:want]])
            if n == 0:
                break
            if record is None:
                record = StreamRecord(started=time.monotonic())
                self.streams.append(record)
                if self.faults.corrupt:
                    verifier.corrupt_next_payload_byte()
                self._on_stream_start()
            verifier.feed(view[:n])
            record.bytes += n
            if rate:
                # Late wake-ups are made up (up to 100 ms of credit), so the mean rate holds under load
                # without a burst after a stall or a slow writer.
                now = time.monotonic()
                next_at = max(next_at or now, now - 0.1) + n / rate
        if record is None:
            return  # a writer opened and closed without a byte: not a stream
        record.ended = time.monotonic()
        record.outcome = verifier.finish()
        self._on_stream_end(record.outcome)

    def close(self) -> None:
        self._stopping = True
        self.changed()
        # A reader blocked in open() returns once a writer appears: be that writer, until the reader has
        # gone (it may only be about to block in open() when we first try).
        deadline = time.monotonic() + 10
        while self._reader.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.close(os.open(self.boot, os.O_WRONLY | os.O_NONBLOCK))
            self._reader.join(timeout=0.05)
        with self._misc_lock:
            while self._recent:
                os.close(self._recent.popleft()[0])


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str


def holder(directory: Path) -> Holder | None:
    """Who holds the rshim at `directory`, or None when it is free (the lock decides, not the file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(directory)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(directory: Path) -> Holder:
    """The claimant's own record, else the lock's owner as the kernel lists it (a foreign holder)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in (directory / ".holder").read_text().splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
    pid = int(fields.get("pid", "0") or 0)
    owner = _lock_owner(directory)
    if owner and owner != pid:
        pid, fields = owner, {}  # the record is stale: whoever wrote it is not who holds the lock
    name = fields.get("name")
    if name is None:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "unknown"
    return Holder(pid=pid, name=name)


def _lock_owner(directory: Path) -> int | None:
    st = os.stat(directory)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode:
                return int(parts[4])
    return None


class RshimBusy(Exception):
    def __init__(self, directory: Path, by: Holder) -> None:
        super().__init__(f"{directory} is held by {by.name} (pid {by.pid})")
        self.by = by


class Claim:
    """An exclusive claim on one rshim (`with claim(dir, "dpf-host-agent"):`)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RshimBusy(directory, _read_holder(directory)) from None
        except OSError as e:
            os.close(self._fd)
            raise OSError(e.errno or errno.EIO, f"claim {directory}") from e
        (directory / ".holder").write_text(f"pid {os.getpid()}\nname {name}\n")

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.directory / ".holder").unlink()
        os.close(self._fd)  # drops the lock
        self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(directory: Path, name: str) -> Claim:
    return Claim(directory, name)


def _writer_gone(poller: select.poll) -> bool:
    """The boot FIFO's writer closed (POLLHUP on the read end once no writer is left)."""
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))
