"""A DPU's rshim device directory (`/dev/rshim<N>`): finding it by PCI address, and claiming it exclusively.

Real rshim serves a device to one process; two writers on `boot` ruin both streams. The claim is an
exclusive non-blocking `flock` on the rshim directory plus a `.holder` record (`pid <pid>\\nname <name>\\n`),
the same protocol the lab's emulator and `flock /dev/rshim0 ...` use, so a foreign holder is recognised:
from its `.holder` record, else from `/proc/locks` and `/proc/<pid>/comm`. The lock dies with its process,
so a crashed agent never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

HOLDER_FILE = ".holder"


def normalise_pci(address: str) -> str:
    """"0000-08-00", "0000:08:00" or "0000:08:00.0" → "0000:08:00" (domain:bus:device, no function)."""
    address = address.strip().lower().replace("-", ":")
    if address.count(":") == 1:
        address = f"0000:{address}"
    return address.split(".", 1)[0]


def find_rshim(sysroot: Path, pci_address: str) -> Path | None:
    """The rshim directory whose `misc` names the device (`DEV_NAME pcie-0000:08:00.0`), as rshim prints it."""
    wanted = normalise_pci(pci_address)
    for directory in sorted((sysroot / "dev").glob("rshim*")):
        try:
            text = (directory / "misc").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "DEV_NAME" and normalise_pci(value.strip().removeprefix("pcie-")) == wanted:
                return directory
    return None


class RshimHeld(Exception):
    """Another process holds the rshim; `holder` says who ("pid 4242 (rshim)")."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"{directory} is held by {holder}")
        self.holder = holder


class RshimClaim:
    """An exclusive claim on one rshim directory; `release()` (or process death) lets it go."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RshimHeld(directory, describe_holder(directory)) from None
        except OSError:
            os.close(self._fd)
            raise
        (directory / HOLDER_FILE).write_text(f"pid {os.getpid()}\nname {name}\n")

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.directory / HOLDER_FILE).unlink()
        os.close(self._fd)  # drops the lock
        self._fd = -1


def describe_holder(directory: Path) -> str:
    """Who holds the lock on `directory`: "pid <pid> (<name>)"; their `.holder` record when it is theirs."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (directory / HOLDER_FILE).read_text().splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    recorded = int(fields["pid"]) if fields.get("pid", "").isdigit() else 0
    owner = lock_owner(directory)
    pid = owner or recorded
    name = fields.get("name", "") if pid == recorded else ""  # a record left by someone else is stale
    if not name:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "unknown"
    return f"pid {pid} ({name})"


def lock_owner(directory: Path) -> int | None:
    """The pid holding a FLOCK on `directory` as /proc/locks lists it (by device and inode)."""
    st = os.stat(directory)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode:
                return int(parts[4])
    return None
