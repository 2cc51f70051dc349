"""Restart children that die, as systemd's `Restart=on-failure` would: after a back-off, within a start limit.

A child that exits with a non-zero status or is killed by a signal other than SIGTERM/SIGINT/SIGHUP/SIGPIPE
(systemd's "clean" signals) is started again with the same command after a delay that starts at
`first_delay` and doubles up to `max_delay`; a run that lasted `stable_after` seconds resets the delay.
More than `burst` restarts within `interval` seconds is a crash loop: the supervisor gives up on that child
and `poll()` raises `StartLimitHit`. A clean exit (status 0, or one of those signals) is left alone, as
systemd leaves a unit that stopped by itself. Each decision is announced as one line.

Opt-in and single-threaded: the lab calls `poll()` from its main loop, so every restart happens in the main
thread (a child's PR_SET_PDEATHSIG is tied to the thread that started it). The test bed never supervises.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dpf.lab.bed.process import Child, ProcessFailed

CLEAN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE})


class StartLimitHit(ProcessFailed):
    """A supervised child kept failing; `watched` names it and its log."""

    def __init__(self, watched: Watched, message: str) -> None:
        super().__init__(message)
        self.watched = watched


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 10.0
    """A run at least this long resets the back-off to `first_delay`."""
    burst: int = 5
    interval: float = 60.0
    """More than `burst` restarts within `interval` seconds: give up (systemd's StartLimitBurst/IntervalSec)."""

    def delay(self, failures: int) -> float:
        """The wait before restart number `failures` of a streak (1-based)."""
        return min(self.first_delay * 2 ** (failures - 1), self.max_delay)


@dataclass
class Watched:
    child: Child
    label: str
    """What a user calls it, e.g. `dpu agent worker1-0000-08-00`."""
    log: Path
    """Where to look when it fails (for OVS daemons their own log file, not the captured stdout)."""
    restarts: int = 0
    streak: int = 0
    """Failures since the last stable run; sets the back-off."""
    restart_times: deque[float] = field(default_factory=deque)
    due: float | None = None
    """When the pending restart runs (None: none pending)."""
    done: bool = False
    """Exited cleanly or gave up: no longer watched."""


class Supervisor:
    def __init__(self, say: Callable[[str], None], policy: RestartPolicy = RestartPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say = say
        self.policy = policy
        self.clock = clock
        self.watched: list[Watched] = []

    def watch(self, child: Child, label: str, log: Path | None = None) -> Watched:
        entry = Watched(child, label, log or child.log)
        self.watched.append(entry)
        return entry

    def poll(self) -> None:
        """Notice exits and run due restarts; raise `StartLimitHit` for a child that keeps failing."""
        now = self.clock()
        for entry in self.watched:
            if entry.done or entry.child.stopped:
                continue
            if entry.due is not None:
                if now >= entry.due:
                    self._restart(entry, now)
            elif not entry.child.alive():
                self._exited(entry, now)

    def _exited(self, entry: Watched, now: float) -> None:
        child, policy = entry.child, self.policy
        reason = child.exit_reason()
        code = child.proc.returncode
        if code == 0 or (code < 0 and -code in CLEAN_SIGNALS):
            entry.done = True
            self.say(f"{entry.label} exited cleanly ({reason}); not restarting it (Restart=on-failure)")
            return
        while entry.restart_times and entry.restart_times[0] <= now - policy.interval:
            entry.restart_times.popleft()
        if len(entry.restart_times) >= policy.burst:
            entry.done = True
            span = now - entry.restart_times[0]
            self.say(f"{entry.label} exited ({reason}) again, {len(entry.restart_times)} restarts within "
                     f"{span:.0f}s; giving up on it (start limit: {policy.burst} restarts per {policy.interval:g}s)")
            raise StartLimitHit(entry, f"{entry.label} keeps failing (last: {reason}); its log: {entry.log} "
                                       f"(less {entry.log}); last lines:\n{_tail(entry.log)}")
        if now - child.started_at >= policy.stable_after:
            entry.streak = 0
        entry.streak += 1
        entry.restarts += 1
        delay = policy.delay(entry.streak)
        entry.due = now + delay
        self.say(f"{entry.label} exited ({reason}); restarting in {delay:g}s (restart {entry.restarts})")

    def _restart(self, entry: Watched, now: float) -> None:
        entry.due = None
        entry.restart_times.append(now)
        entry.child.respawn(f"restarted by the supervisor after it exited ({entry.child.exit_reason()}), "
                            f"restart {entry.restarts}")
        self.say(f"{entry.label} running again as pid {entry.child.pid}; log: {entry.log}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
