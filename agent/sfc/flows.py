"""The SFC agent's only OpenFlow door: atomic flow bundles, flow dumps and the switch watcher.

Bundles take the typed flow mods `desired.py` builds (`flowspec.py`: add / delete / strict delete)
and go one of two ways, with the same atomic result:
- small ones (incremental updates: a few mods) over the persistent OpenFlow connection in
  `ofconn.py`, as each mod's `to_wire()` bytes: about 0.5 ms, against 4 ms for an `ovs-ofctl`
  process on an idle switch and 15 ms on a busy one;
- big ones (full resyncs) through `ovs-ofctl --bundle add-flows`, as each mod's `to_ofctl()` text,
  whose C encoder wins from about a thousand mods on (`SfcSettings.connection_max_mods`). ovs-ofctl
  is also the fallback when the connection cannot be used; every bundle we send is idempotent, so
  re-sending it that way is safe.

Dumps stay with `ovs-ofctl dump-flows` (only resyncs and repairs of hand-made drift need them).
`FlowMonitor` keeps one `ovs-ofctl monitor … watch:` child connected to the bridge. Its connection
drops exactly when ovs-vswitchd goes away (and with it every flow), and it reports flows deleted or
modified by anyone, so both kinds of drift are noticed at once instead of on a timer. The child dies
with the agent (PR_SET_PDEATHSIG), and a starting monitor ends the ones a killed agent left behind.

Never decides what to program: the flow mods come from `desired.py`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from dpf.agent.sfc.flowspec import FlowMod
from dpf.agent.sfc.ofconn import BundleRefused, OpenFlowConnection, OpenFlowError, OpenFlowTimeout
from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedFlow

log = logging.getLogger(__name__)

_META = re.compile(r"^(cookie|table|idle_timeout|hard_timeout|importance|duration|n_packets|n_bytes|idle_age|"
                   r"hard_age)=")
_EVENT = re.compile(r"^\s*event=(DELETED|MODIFIED)\b(?P<rest>.*)$")
_COOKIE = re.compile(r"\bcookie=(0x[0-9a-f]+|\d+)")


class OfctlError(RuntimeError):
    """An OpenFlow operation failed; the message carries the switch's error names (or ovs-ofctl's stderr),
    which name the offending flow."""


class Ofctl:
    """Bundles and dumps for the SFC bridge; used by the programmer's worker thread only."""

    def __init__(self, settings: SfcSettings) -> None:
        self.settings = settings
        self.connection = OpenFlowConnection(settings.ovs_rundir / f"{settings.bridge}.mgmt",
                                             settings.openflow_timeout)
        self.bundles = {"openflow": 0, "ovs-ofctl": 0}  # bundles applied per transport, for logs and tests

    def close(self) -> None:
        self.connection.close()

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        argv = [self.settings.ofctl, "-O", self.settings.openflow_version, *args]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=_env(self.settings),
                                  timeout=self.settings.ofctl_timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OfctlError(f"{' '.join(argv)}: no answer within {self.settings.ofctl_timeout:.0f}s") from None
        if done.returncode != 0:
            raise OfctlError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def bundle(self, mods: Iterable[FlowMod]) -> int:
        """Apply flow mods as one atomic bundle; returns how many were sent (0: nothing ran)."""
        mods = list(mods)
        if not mods:
            return 0
        if len(mods) <= self.settings.connection_max_mods:
            try:
                sent = self.connection.bundle(mods)
            except BundleRefused as exc:
                raise OfctlError(str(exc)) from None  # ovs-ofctl would be refused the same way
            except OpenFlowTimeout as exc:
                raise OfctlError(str(exc)) from None  # a switch that does not answer will not answer ovs-ofctl
            except OpenFlowError as exc:
                log.warning("sending this bundle through ovs-ofctl: %s", exc)
            else:
                self.bundles["openflow"] += 1
                return sent
        self.ofctl_bundle(mods)
        return len(mods)

    def ofctl_bundle(self, mods: list[FlowMod]) -> None:
        """The same atomic bundle through one `ovs-ofctl --bundle add-flows` run."""
        # --no-names: otherwise ovs-ofctl first fetches all 254 tables' features to parse table names (+10 ms).
        self._run(["--no-names", "--bundle", "add-flows", self.settings.of_target(), "-"],
                  stdin="".join(f"{mod.to_ofctl()}\n" for mod in mods))
        self.bundles["ovs-ofctl"] += 1

    def dump(self, cookie: int | None = None) -> list[ObservedFlow]:
        """Every flow on the bridge, or only those with `cookie` (the switch filters by its cookie index)."""
        args = ["--no-names", "--no-stats", "dump-flows", self.settings.of_target()]
        if cookie is not None:
            args.append(f"cookie={cookie:#x}/-1")
        return parse_dump(self._run(args))


def _env(settings: SfcSettings) -> dict[str, str]:
    # `ovs-ofctl monitor` opens its own control socket in OVS_RUNDIR; keep it beside the switch's.
    return {**os.environ, "OVS_RUNDIR": str(settings.ovs_rundir)}


def parse_dump(text: str) -> list[ObservedFlow]:
    """Parse `ovs-ofctl --no-stats --no-names dump-flows` output (header lines are skipped)."""
    flows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("actions="):  # a flow with every field at its default: no cookie, table 0, no match
            head, actions = "", line.removeprefix("actions=")
        elif " actions=" in line and not line.startswith(("OFPST_", "NXST_")):
            head, actions = line.split(" actions=", 1)
            head = head.rstrip(",")  # `cookie=0x9, table=3, actions=drop`: no priority or match after the comma
        else:
            continue
        meta = {}
        rest = ""
        for part in head.split(", "):
            if _META.match(part) and not rest:
                key, value = part.split("=", 1)
                meta[key] = value
            else:
                rest = f"{rest},{part}" if rest else part
        priority = 32768
        if rest.startswith("priority="):
            value, _, rest = rest.partition(",")
            priority = int(value.split("=", 1)[1])
        flows.append(ObservedFlow(cookie=int(meta.get("cookie", "0"), 0), table=int(meta.get("table", "0")),
                                  priority=priority, match=rest, actions=actions,
                                  idle_timeout=int(meta.get("idle_timeout", "0"))))
    return flows


def monitor_argv(settings: SfcSettings) -> list[str]:
    """The agent's `ovs-ofctl monitor` command line; the socket path in it names the bridge and the run dir."""
    return [settings.ofctl, "-O", settings.openflow_version, "--no-names", "monitor", settings.of_target(),
            "watch:!initial,!add"]


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> None:
    """In the forked child before exec: get SIGTERM when the thread that forked us ends (with the agent, when it is
    killed), and give up if the agent is already gone. SIGTERM, not SIGKILL: ovs-ofctl then removes its control
    socket from the OVS run dir."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != parent:
        os._exit(1)


def leftover_monitors(argv: list[str]) -> list[int]:
    """Pids of processes running exactly `argv` that are not our children: monitors of an earlier agent on the same
    bridge and run dir (the socket path in `argv` names both) that outlived it."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes() != wanted:
                continue
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state != "Z" and int(ppid) != os.getpid():
            found.append(int(proc.name))
    return found


def reap(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM `pids`, then SIGKILL whichever still runs after `grace` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class FlowMonitor:
    """A supervised `ovs-ofctl monitor <bridge> watch:!initial,!add` child on its own thread.

    Calls `on_connected(first)` each time the connection is (re)established, i.e. when
    ovs-vswitchd is up and the bridge exists, and `on_touched(cookies)` for flows somebody deleted
    (reason=delete, not idle expiry) or modified. Both callbacks must only enqueue.
    """

    def __init__(self, settings: SfcSettings, on_connected: Callable[[bool], None],
                 on_touched: Callable[[set[int]], None], on_disconnected: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._on_connected = on_connected
        self._on_touched = on_touched
        self._on_disconnected = on_disconnected  # the connection dropped: vswitchd stopped or the bridge is gone
        self._stopping = threading.Event()
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sfc-flow-monitor", daemon=True)
        self.connections = 0

    def start(self) -> None:
        if leftovers := leftover_monitors(monitor_argv(self.settings)):
            log.warning("ending %d `ovs-ofctl monitor` process(es) of %s left by an earlier agent: pid %s",
                        len(leftovers), self.settings.of_target(), ", ".join(map(str, leftovers)))
            reap(leftovers)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            child = self._child
        if child and child.poll() is None:
            child.terminate()
        if self._thread.is_alive():  # a monitor stopped before it started (start-up failed) has no thread
            self._thread.join(5)

    def _run(self) -> None:
        # This thread forks the child and outlives it (the child is ended in `finally` before the thread leaves),
        # so the child's parent-death signal fires only when the agent itself dies.
        argv = monitor_argv(self.settings)
        die_with_agent = functools.partial(_die_with, os.getpid())
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               stdin=subprocess.DEVNULL, env=_env(self.settings),
                                               preexec_fn=die_with_agent)
            child = self._child
            try:
                self._read(child)
            finally:
                if child.poll() is None:
                    child.terminate()
                child.wait(5)
                if child.stdout is not None:
                    child.stdout.close()
            self._stopping.wait(self.settings.switch_reconnect_interval)

    def _read(self, child: subprocess.Popen[str]) -> None:
        connected = False
        assert child.stdout is not None  # stdout=PIPE
        for line in child.stdout:
            if not connected and "FLOW_MONITOR reply" in line:
                connected = True
                self.connections += 1
                log.info("OpenFlow monitor connected to %s (connection %d)", self.settings.of_target(),
                         self.connections)
                self._on_connected(self.connections == 1)
                continue
            event = _EVENT.match(line)
            if not event:
                continue
            if event.group(1) == "DELETED" and "reason=delete" not in event.group("rest"):
                continue  # idle/hard timeouts of learned flows are normal life
            cookie = _COOKIE.search(event.group("rest"))
            if cookie:
                self._on_touched({int(cookie.group(1), 0)})
        if connected and not self._stopping.is_set():
            log.warning("OpenFlow connection to %s lost: ovs-vswitchd stopped or the bridge went away",
                        self.settings.of_target())
            if self._on_disconnected is not None:
                self._on_disconnected()
