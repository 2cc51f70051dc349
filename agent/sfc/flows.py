"""The SFC agent's only OpenFlow door: atomic flow bundles, flow dumps and the switch watcher.

Bundles take the flow-mod lines `desired.py` renders (`add`/`delete`/`delete_strict`, ovs-ofctl
syntax: what operators read in `ovs-ofctl dump-flows`, so what we send is what they see) and go
one of two ways, with the same atomic result:
- small ones (incremental updates: a few mods) over the persistent OpenFlow connection in
  `ofconn.py` (encoded by `ofwire.py`): about 0.5 ms, against 4 ms for an `ovs-ofctl` process on an
  idle switch and 15 ms on a busy one;
- big ones (full resyncs) through `ovs-ofctl --bundle add-flows`, whose C encoder wins from about a
  thousand mods on (`SfcSettings.connection_max_mods`). ovs-ofctl is also the fallback when a line
  has a shape `ofwire.py` does not encode or the connection cannot be used; every bundle we send is
  idempotent, so re-sending it that way is safe.

Dumps stay with `ovs-ofctl dump-flows` (only resyncs and repairs of hand-made drift need them).
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

from dpf.agent.sfc.ofconn import BundleRefused, OpenFlowConnection, OpenFlowError, OpenFlowTimeout, Unsupported
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

    def bundle(self, lines: Iterable[str]) -> int:
        """Apply flow mods as one atomic bundle; returns how many were sent (0: nothing ran)."""
        lines = list(lines)
        if not lines:
            return 0
        if len(lines) <= self.settings.connection_max_mods:
            try:
                sent = self.connection.bundle(lines)
            except BundleRefused as exc:
                raise OfctlError(str(exc)) from None  # ovs-ofctl would be refused the same way
            except OpenFlowTimeout as exc:
                raise OfctlError(str(exc)) from None  # a switch that does not answer will not answer ovs-ofctl
            except Unsupported as exc:
                log.info("sending this bundle through ovs-ofctl: %s", exc)
            except OpenFlowError as exc:
                log.warning("sending this bundle through ovs-ofctl: %s", exc)
            else:
                self.bundles["openflow"] += 1
                return sent
        self.ofctl_bundle(lines)
        return len(lines)

    def ofctl_bundle(self, lines: list[str]) -> None:
        """The same atomic bundle through one `ovs-ofctl --bundle add-flows` run."""
        # --no-names: otherwise ovs-ofctl first fetches all 254 tables' features to parse table names (+10 ms).
        self._run(["--no-names", "--bundle", "add-flows", self.settings.of_target(), "-"],
                  stdin="\n".join(lines) + "\n")
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
            if self._on_disconnected is not None:
                self._on_disconnected()
