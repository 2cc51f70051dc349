"""What the host agent must remember across its own restarts: installs that reached DONE (with the host's
boot id at that moment, so "the host rebooted since" can be told later) and reboots it issued. One JSON file,
written atomically (temp file, fsync, rename, directory fsync) before the outcome is reported.

Anything not recorded here is, after a restart, as if it never happened: an install that was streaming when
the agent died is flashed again from the start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallDone:
    boot_id: str
    at: float


@dataclass(frozen=True)
class RebootIssued:
    error: str
    at: float


class Records:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.installs: dict[str, InstallDone] = {}
        self.reboots: dict[str, RebootIssued] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.installs = {k: InstallDone(**v) for k, v in data.get("installs", {}).items()}
            self.reboots = {k: RebootIssued(**v) for k, v in data.get("reboots", {}).items()}
        except FileNotFoundError:
            return
        except (ValueError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.error("%s does not parse (%s); moved aside to %s", self.path, exc, aside)
            os.replace(self.path, aside)

    def install_done(self, install_id: str, boot_id: str) -> None:
        self.installs[install_id] = InstallDone(boot_id, time.time())
        self._save()

    def reboot_issued(self, reboot_id: str, error: str = "") -> None:
        self.reboots[reboot_id] = RebootIssued(error, time.time())
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"installs": {k: asdict(v) for k, v in self.installs.items()},
                "reboots": {k: asdict(v) for k, v in self.reboots.items()}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
