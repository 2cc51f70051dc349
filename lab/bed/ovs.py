"""Open vSwitch (Debian's ovsdb-server + ovs-vswitchd) in a private run dir inside its own netns.

Userspace datapath only (`datapath_type=netdev`): this kernel has no openvswitch module. Two
vswitchd instances in one namespace fight over their tap devices, hence one netns each. Ports
are veths whose switch-side end lives in `self.netns`. The OVS CLI tools reach the daemons
through unix sockets in `rundir`, so they run from any namespace.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OPENFLOW = "OpenFlow13"


@dataclass
class OvsSwitch:
    netns: str
    rundir: Path
    children: dict[str, Child] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        run = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": run, "OVS_DBDIR": run, "OVS_LOGDIR": run,
                "OVS_SYSCONFDIR": str(self.rundir / "etc")}

    def log(self, daemon: str) -> Path:
        """The daemon's own log file (its stdout, in `<daemon>.stdout`, holds little more than start-up errors)."""
        return self.rundir / f"{daemon}.log"

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> OvsSwitch:
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "etc" / "openvswitch").mkdir(parents=True, exist_ok=True)
        db = self.rundir / "conf.db"
        try:
            if not db.exists():
                subprocess.run([tool("ovsdb-tool"), "create", str(db), str(SCHEMA)], check=True,
                               capture_output=True)
            self._start_ovsdb()
            wait_until(self.db_sock.exists, 10, "ovsdb-server socket", while_alive=self.children.values())
            self.vsctl("--no-wait", "init")
            self.start_vswitchd()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_ovsdb(self) -> Child:
        return self._start("ovsdb-server", [str(self.rundir / "conf.db"), f"--remote=punix:{self.db_sock}",
                                            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options"])

    def _start(self, daemon: str, args: list[str]) -> Child:
        argv = [tool("ip"), "netns", "exec", self.netns, tool(daemon), *args,
                f"--pidfile={self.rundir / daemon}.pid", f"--unixctl={self.rundir / daemon}.ctl",
                f"--log-file={self.log(daemon)}"]
        child = Child(daemon, argv, self.rundir / f"{daemon}.stdout", env=self.env)
        self.children[daemon] = child
        return child

    def start_vswitchd(self) -> None:
        self._start("ovs-vswitchd", [f"unix:{self.db_sock}"])
        wait_until(self._vswitchd_answers, 15, "ovs-vswitchd control socket",
                   while_alive=[self.children["ovs-vswitchd"]])
        # It answers before it has built the bridges the database holds; OpenFlow to them fails until then.
        wait_until(self._bridges_answer, 15, "ovs-vswitchd to open the bridges in its database",
                   while_alive=[self.children["ovs-vswitchd"]])

    def _vswitchd_answers(self) -> bool:
        return self.appctl("ovs-vswitchd", "version", check=False).returncode == 0

    def _bridges_answer(self) -> bool:
        bridges = self.vsctl("list-br").stdout.split()
        return all(self.ofctl("show", bridge, check=False).returncode == 0 for bridge in bridges)

    def stop_vswitchd(self) -> None:
        """Stop ovs-vswitchd the way a crash or upgrade would: its flows are gone afterwards."""
        child = self.children.pop("ovs-vswitchd", None)
        if child:
            child.stop()

    def restart_ovsdb(self) -> None:
        """Restart ovsdb-server on the same database file (an upgrade or crash of the database alone):
        clients lose their connection and must reconnect; ovs-vswitchd keeps its bridges and flows."""
        child = self.children.pop("ovsdb-server", None)
        if child:
            child.stop()
        self._start_ovsdb()
        wait_until(lambda: self.vsctl("--no-wait", "show", check=False).returncode == 0, 10,
                   "ovsdb-server answering again", while_alive=[self.children["ovsdb-server"]])

    def restart_vswitchd(self) -> None:
        self.stop_vswitchd()
        self.start_vswitchd()

    def stop(self) -> None:
        for name in ("ovs-vswitchd", "ovsdb-server"):
            child = self.children.pop(name, None)
            if child:
                child.stop()

    # -- tools ---------------------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def vsctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self._run([tool("ovs-vsctl"), f"--db=unix:{self.db_sock}", *args], check, timeout)

    def ofctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self._run([tool("ovs-ofctl"), "-O", OPENFLOW, *args], check, timeout)

    def appctl(self, daemon: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([tool("ovs-appctl"), "-t", str(self.rundir / f"{daemon}.ctl"), *args], check, 30)

    def add_bridge(self, name: str, fail_mode: str = "secure") -> None:
        self.vsctl("--may-exist", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
                   f"fail_mode={fail_mode}", "protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15")

    def add_port(self, bridge: str, port: str, ofport: int | None = None) -> int:
        """Attach an existing netdev (in `self.netns`) and return its OpenFlow port number."""
        extra = ["--", "set", "interface", port, f"ofport_request={ofport}"] if ofport else []
        self.vsctl("--may-exist", "add-port", bridge, port, *extra)
        return int(wait_until(lambda: self._ofport(port), 10, f"ofport of {port}"))

    def _ofport(self, port: str) -> int | None:
        value = int(self.vsctl("get", "interface", port, "ofport").stdout.strip() or -1)
        return value if value > 0 else None

    def flows(self, bridge: str) -> list[str]:
        lines = self.ofctl("dump-flows", "--no-stats", bridge).stdout.splitlines()
        return [line.strip() for line in lines if line.strip() and "reply" not in line]
