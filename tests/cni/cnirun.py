"""Run a CNI plugin binary the way a runtime does (env + stdin), and inspect what it left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dpf.lab.bed.ovs import OvsSwitch


@dataclass
class CniResult:
    rc: int
    doc: dict | None
    stderr: str
    seconds: float = 0.0

    @property
    def code(self) -> int | None:
        return self.doc.get("code") if self.doc else None


def netconf(socket: Path, version: str = "1.0.0", name: str = "sfc", **extra: object) -> dict:
    conf = {"cniVersion": version, "name": name, "type": "dpf-sfc-cni", "bridge": "br-sfc",
            "agentSocket": str(socket), "ipam": {"type": "dpf-ipam", "poolName": "pool1"}}
    conf.update(extra)
    return conf


def call(binary: Path, command: str, conf: dict | str, container_id: str = "", netns: str = "",
         ifname: str = "net1", args: str = "", timeout: float = 30) -> CniResult:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_PATH": f"{binary.parent}:/usr/lib/cni"}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns if netns.startswith("/") else f"/run/netns/{netns}"
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    data = conf if isinstance(conf, str) else json.dumps(conf)
    started = time.monotonic()
    proc = subprocess.run([str(binary)], input=data, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    return CniResult(proc.returncode, doc, proc.stderr, seconds)


def owned_ports(ovs: OvsSwitch) -> dict[str, dict[str, str]]:
    """Port name -> Interface external_ids, for every port carrying our owner marker."""
    out = ovs.vsctl("--format=json", "--columns=name,external_ids", "find", "Interface",
                    "external_ids:dpf-owner=dpf-cni").stdout
    rows = json.loads(out)["data"]
    return {name: dict(ids[1]) for name, ids in rows}


def host_veths(ovs: OvsSwitch) -> list[str]:
    out = subprocess.run(["ip", "-n", ovs.netns, "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return sorted(n for n in names if n.startswith("dpc"))
