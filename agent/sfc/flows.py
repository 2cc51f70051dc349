"""The SFC agent's only OpenFlow door: atomic flow bundles, flow dumps and the switch watcher, via `ovs-ofctl`.

Why ovs-ofctl and not an OpenFlow library: a rendered flow file sent as one bundle
(`ovs-ofctl --bundle add-flows`, each line `add`/`delete`/`delete_strict`) is atomic, needs no
controller connection of our own, and measured 70-140k flows/s here against about 12k/s for os-ken
(ryu does not run unpatched on Python 3.11); see bench/RESULTS.md for this agent's own numbers.
Flow text is what operators read in `ovs-ofctl dump-flows`, so what we send is what they see.

`FlowMonitor` keeps one `ovs-ofctl monitor … watch:` child connected to the bridge. Its connection
drops exactly when ovs-vswitchd goes away (and with it every flow), and it reports flows deleted or
modified by anyone, so both kinds of drift are noticed at once instead of on a timer.

Never decides what to program: the lines come from `desired.py`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable

from dpf.agent.sfc.settings import SfcSettings
from dpf.agent.sfc.view import ObservedFlow

log = logging.getLogger(__name__)

_META = re.compile(r"^(cookie|table|idle_timeout|hard_timeout|importance|duration|n_packets|n_bytes|idle_age|"
                   r"hard_age)=")
_EVENT = re.compile(r"^\s*event=(DELETED|MODIFIED)\b(?P<rest>.*)$")
_COOKIE = re.compile(r"\bcookie=(0x[0-9a-f]+|\d+)")


class OfctlError(RuntimeError):
    """ovs-ofctl failed; the message carries its stderr (which names the offending flow)."""


class Ofctl:
    def __init__(self, settings: SfcSettings) -> None:
        self.settings = settings

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

    def bundle(self, lines: Iterable[str]) -> int:
        """Apply flow mods as one atomic bundle; returns how many were sent (0: nothing ran)."""
        lines = list(lines)
        if not lines:
            return 0
        # --no-names: otherwise ovs-ofctl first fetches all 254 tables' features to parse table names (+10 ms).
        self._run(["--no-names", "--bundle", "add-flows", self.settings.of_target(), "-"],
                  stdin="\n".join(lines) + "\n")
        return len(lines)

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
        if not line or " actions=" not in line or line.startswith(("OFPST_", "NXST_")):
            continue
        head, actions = line.split(" actions=", 1)
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


class FlowMonitor:
    """A supervised `ovs-ofctl monitor <bridge> watch:!initial,!add` child on its own thread.

    Calls `on_connected(first)` each time the connection is (re)established, i.e. when
    ovs-vswitchd is up and the bridge exists, and `on_touched(cookies)` for flows somebody deleted
    (reason=delete, not idle expiry) or modified. Both callbacks must only enqueue.
    """

    def __init__(self, settings: SfcSettings, on_connected: Callable[[bool], None],
                 on_touched: Callable[[set[int]], None]) -> None:
        self.settings = settings
        self._on_connected = on_connected
        self._on_touched = on_touched
        self._stopping = threading.Event()
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sfc-flow-monitor", daemon=True)
        self.connections = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            child = self._child
        if child and child.poll() is None:
            child.terminate()
        self._thread.join(5)

    def _run(self) -> None:
        argv = [self.settings.ofctl, "-O", self.settings.openflow_version, "--no-names", "monitor",
                self.settings.of_target(), "watch:!initial,!add"]
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               stdin=subprocess.DEVNULL, env=_env(self.settings))
            child = self._child
            try:
                self._read(child)
            finally:
                if child.poll() is None:
                    child.terminate()
                child.wait(5)
                child.stdout.close()
            self._stopping.wait(self.settings.switch_reconnect_interval)

    def _read(self, child: subprocess.Popen[str]) -> None:
        connected = False
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
