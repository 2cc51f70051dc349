"""Child processes owned by the bed: started with a log file, stopped in order, never leaked.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed test run or lab takes its etcd,
kube-apiserver and OVS daemons down with it. Children run in their own process group so a
terminal Ctrl-C reaches only us; our teardown then stops them in reverse start order.

A child that dies stays dead (tests want a dead daemon to be visible) unless something restarts it:
the lab's `supervise.Supervisor` does, through `Child.respawn`. The death signal fires when the
*thread* that started a child ends, so children are (re)started from the main thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1
logger = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessFailed(RuntimeError):
    pass


_live: dict[int, Child] = {}


def live_children() -> dict[int, str]:
    """pid -> name of every Child started by this process and not yet stopped."""
    return {pid: child.name for pid, child in _live.items()}


def descendants(root: int | None = None) -> dict[int, str]:
    """pid -> command name of every live descendant of `root` (default: this process)."""
    parents: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = (int(fields[1]), comm)
    found: dict[int, str] = {}
    frontier = [root or os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, comm) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = comm
                frontier.append(pid)
    return found


class Child:
    """One supervised process with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.stopped = False
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()
        _live[self.proc.pid] = self

    def respawn(self, note: str) -> None:
        """Start the same command again after it exited; `note` goes into the log, where the new run begins."""
        if self.stopped or self.alive():
            raise RuntimeError(f"{self.name} is {'stopped' if self.stopped else 'running'}; not respawning it")
        _live.pop(self.proc.pid, None)
        self._log_file.write(f"--- {time.strftime('%H:%M:%S')} {note} ---\n".encode())
        self._log_file.flush()
        self._spawn()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str:
        """How the last run ended, as `status N` or `signal N` (empty while it runs)."""
        code = self.proc.poll()
        if code is None:
            return ""
        return f"signal {-code}" if code < 0 else f"status {code}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessFailed(
                f"{self.name} exited with status {self.proc.returncode}; last lines of {self.log}:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped = True
        if self.alive():
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                logger.info("%s stopped in %.1f s", self.name, time.monotonic() - started)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait(5)
        _live.pop(self.proc.pid, None)
        self._log_file.close()


def wait_until(predicate: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.05,
               while_alive: Iterable[Child] = ()) -> _T:
    """Poll `predicate` until it returns a truthy value; fail naming `what` on timeout.

    Children in `while_alive` are checked on every round so a crashed daemon fails fast with
    its log instead of burning the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for child in while_alive:
            child.check_alive()
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the predicate probes something not up yet
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port free right now (the kernel picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a script's `finally` (stopping daemons, removing namespaces) runs when
    it is stopped with a plain `kill`, as it does on Ctrl-C; the default action would skip it."""
    owner = os.getpid()

    def _exit(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a fork that inherited the handler (pyroute2's netns helper): never run our finally
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
