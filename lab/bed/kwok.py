"""kwok (sigs.k8s.io/kwok, "Kubernetes WithOut Kubelet"): simulated Nodes for scale benches, where a real kubelet
(with containerd and an OVS) per emulated DPU does not fit on the machine.

`Kwok` runs the kwok controller against a cluster; it manages only the Nodes annotated `kwok.x-k8s.io/node=fake`
and plays their kubelets: sets their status Ready (addresses, capacity, conditions), renews their heartbeats and
leases, and runs the pods bound to them as Running. The Node object itself is created by whoever plays the node's
registration: `KwokDpuOs` does it for an emulated DPU when the DPU boots a bf.cfg carrying a join command, as the
kubelet started by that join would (the Node's name is the DPU's hostname).

Built on demand from its Go module (`python packaging/install.py --module kwok`; `ensure_kwok()` runs it when the
binary is not there yet): `./dev setup` does not build it, only the bench needs it.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from dpf.lab.bed.process import Child
from dpf.lab.bed.tools import REPO, tools_dir
from dpf.lab.emulator.dpu import BootEvent, EmulatedDpu

log = logging.getLogger(__name__)

ANNOTATION = "kwok.x-k8s.io/node"
FAKE = "fake"
STAGES = REPO / "packaging" / "upstream" / "kwok" / "stages.yaml"  # upstream's node-initialize + heartbeat-with-lease


def ensure_kwok() -> str:
    """The kwok binary, built (once, minutes) from packaging/upstream/kwok when it is missing."""
    path = tools_dir() / "kwok"
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "packaging" / "install.py"), "--module", "kwok"], check=True)
    return str(path)


class Kwok:
    """The kwok controller for one cluster (its kubeconfig), managing the Nodes annotated for it."""

    def __init__(self, kubeconfig: Path, log_file: Path, node_ip: str = "192.0.2.1") -> None:
        self.kubeconfig = kubeconfig
        self.log_file = log_file
        self.node_ip = node_ip
        self.child: Child | None = None

    def start(self) -> Kwok:
        self.child = Child("kwok", [
            ensure_kwok(), "--kubeconfig", str(self.kubeconfig), "--config", str(STAGES), "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={ANNOTATION}={FAKE}", f"--node-ip={self.node_ip}",
            "--node-lease-duration-seconds=40"], self.log_file)
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def __enter__(self) -> Kwok:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_manifest(name: str, labels: dict[str, str] | None = None) -> k8s.V1Node:
    """The Node a kubelet registers for `name`, annotated for kwok."""
    return k8s.V1Node(metadata=k8s.V1ObjectMeta(
        name=name, annotations={ANNOTATION: FAKE},
        labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64",
                "type": "kwok", **(labels or {})}))


class KwokDpuOs:
    """What an emulated DPU's OS does after boot in a kwok bench: when the boot's bf.cfg has a join command,
    register the DPU's Node (named by the bf.cfg's hostname) in the DPU cluster; kwok makes it Ready. Nothing else
    (no files, no OVS, no DPU agent). Boot events go to one worker thread shared by the host's DPUs."""

    def __init__(self, dpus: list[EmulatedDpu], kubeconfig: Path, say: Callable[[str], None] = log.info) -> None:
        self.dpus = dpus
        self.api = k8s.CoreV1Api(k8s_config.new_client_from_config(str(kubeconfig)))
        self.say = say
        self.joined: list[str] = []
        self.failures: list[str] = []
        self._events: queue.Queue[BootEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kwok-dpu-os", daemon=True)

    def start(self) -> KwokDpuOs:
        for dpu in self.dpus:
            dpu.on_ready.append(self._events.put)
        self._thread.start()
        return self

    def close(self) -> None:
        for dpu in self.dpus:
            if self._events.put in dpu.on_ready:
                dpu.on_ready.remove(self._events.put)
        self._events.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (event := self._events.get()) is not None:
            if event.bfcfg is None or event.bfcfg.join_command is None:
                continue
            node = event.hostname or event.dpu
            try:
                self.api.create_node(node_manifest(node))
            except k8s.ApiException as exc:
                if exc.status != 409:  # 409: registered by an earlier boot, as a restarted kubelet finds it
                    self.failures.append(f"{event.dpu}: registering node {node}: {exc.status} {exc.reason}")
                    log.error("%s", self.failures[-1])
                    continue
            self.joined.append(node)
            self.say(f"{event.dpu}: joined the DPU cluster as node {node} (kwok)")
