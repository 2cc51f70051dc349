"""A provisioning bed of real parts, cheap enough for many scenarios on a small machine: the real apiserver
(`kube`), the controller's reconcilers in this process (DPU, host-node labeller, DPUCluster connector, and the
DPUSet reconciler when asked) serving the NodeState stream on a unix socket, an emulated host in a process of
its own (`python -m dpf.lab.emulator`: PCI sysfs, rshims, power) and the real host agent (`dpf agent host`, its
own process in the emulated host's network namespace).

The DPU cluster is the host apiserver itself (a static DPUCluster whose kubeconfig points at it); a DPU's
Node there is made by the test (`join`) where the join is not what the test is about: the kubelet's join is
tested in tests/e2e/test_provisioning.py.

Use:

    async with ProvisioningBed(kube, namespace, tmp_path, settings=FAST) as bed:
        await bed.create_dpu("x", pci="0000-08-00")
        await bed.wait_phase("x", ph.READY)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dpf.controller.kube.rest import EVENT, KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.reconcilers.dpu import DPUReconciler
from dpf.controller.reconcilers.dpucluster import DPUClusterReconciler
from dpf.controller.reconcilers.dpuset import DPUSetReconciler
from dpf.controller.reconcilers.hostnode import HostNodeReconciler
from dpf.controller.reconcilers.kinds import BFB, DPU, DPU_CLUSTER, NODE
from dpf.controller.settings import ProvisioningSettings, ServerSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child
from tests.controlplane.harness import controller_settings, dpu_cluster, eventually, host_rest, insecure, started
from tests.hostagent.harness import host_name, image

SLOW = 90.0
BFB_NAME = "bf-bundle"
BFB_FILE = "os.bfb"

# Short timeouts and back-offs: the fault scenarios spend their attempts in seconds, not minutes.
FAST = ProvisioningSettings(max_attempts=2, retry_base=0.5, retry_max=1.0, install_timeout=60.0,
                            progress_interval=0.5)


class Emulator:
    """`python -m dpf.lab.emulator` with `dpus` BlueFields (PCI 0000:08:00.0, 0000:09:00.0, ...)."""

    def __init__(self, root: Path, log: Path, dpus: int = 1) -> None:
        self.root = root
        self.name = host_name()
        self.child = Child("emulator", [sys.executable, "-m", "dpf.lab.emulator", str(root), "--name", self.name,
                                        "--dpus", str(dpus), "--owner", "t", "--install-seconds", "0.1"], log)

    @property
    def netns(self) -> str:
        return f"dpf-t{self.child.pid}-{self.name}"

    @property
    def control(self) -> Path:
        return self.root / "run/emulator/control.sock"

    @property
    def ipmitool(self) -> Path:
        return self.root / "usr/bin/ipmitool"

    async def started(self) -> Emulator:
        await eventually(lambda: self.control.exists() and (self.root / "proc/sys/kernel/random/boot_id").exists(),
                         "the emulated host", timeout=60)
        return self

    def power_actions(self) -> list[str]:
        """The power.log: one action per line (cycle, reset, on, off), in order."""
        try:
            return [line.split()[1] for line in (self.root / "run/emulator/power.log").read_text().splitlines()]
        except FileNotFoundError:
            return []

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        from dpf.lab.emulator.control import request

        reply = await asyncio.to_thread(request, self.control, message)
        assert reply.get("ok"), reply
        return reply

    async def status(self, dpu: int = 0) -> dict[str, Any]:
        return (await self.request({"op": "status"}))["dpus"][dpu]

    async def faults(self, dpu: int = 0, **dials: Any) -> None:
        await self.request({"op": "faults", "dpu": dpu, "set": dials})

    async def power(self, action: str) -> None:
        await self.request({"op": "power", "action": action})

    def rshim_held(self, index: int = 0) -> bool:
        """Someone holds the rshim's lock (a killed holder's `.holder` record stays; its lock does not)."""
        from dpf.lab.emulator.rshim import holder

        return holder(self.root / f"dev/rshim{index}") is not None

    def stop(self) -> None:
        self.child.stop()


def ip(netns: str, *args: str) -> str:
    import subprocess

    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


class ProvisioningBed:
    def __init__(self, kube: ControlPlane, namespace: str, workdir: Path, *,
                 settings: ProvisioningSettings = FAST, dpus: int = 1, dpuset: bool = False,
                 host_annotations: dict[str, str] | None = None, host_labels: dict[str, str] | None = None,
                 max_nodes: int | None = None, bfb_ready: bool = True, replicas: int = 1) -> None:
        self.kube = kube
        self.namespace = namespace
        self.workdir = workdir
        self.host = f"{namespace}-host"[-63:].lstrip("-")
        self._provisioning = settings
        self._dpus = dpus
        self._dpuset = dpuset
        self._host_annotations = host_annotations or {}
        self._host_labels = host_labels or {}
        self._max_nodes = max_nodes
        self._bfb_ready = bfb_ready
        self.bfb_dir = workdir / "bfb"
        self.socket = workdir / "controller.sock"
        self.sockets = [self.socket] + [workdir / f"controller-{i}.sock" for i in range(1, replicas)]
        self.replicas: list[Controller] = []
        """With replicas > 1: every replica started (and not stopped), in start order."""
        self._socket_index: dict[int, int] = {}  # id(replica) -> the index of the socket it serves on
        self.rest: Rest
        self.emulator: Emulator
        self.controller: Controller | None = None
        self.agent: Child | None = None
        self._nodes: list[str] = []

    # ---- life -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> ProvisioningBed:
        image(self.bfb_dir, BFB_FILE)
        self.rest = await host_rest(self.kube.kubeconfig)
        self.emulator = await Emulator(self.workdir / "host", self.workdir / "emulator.log", self._dpus).started()
        try:
            for args in (("link", "add", "br-dpu", "type", "bridge"), ("addr", "add", "192.0.2.1/24", "dev", "br-dpu"),
                         ("link", "set", "br-dpu", "up")):
                ip(self.emulator.netns, *args)
            await self.rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": self.host, "annotations": self._host_annotations, "labels": self._host_labels}})
            self._nodes.append(self.host)
            await dpu_cluster(self.rest, self.namespace, self.kube.kubeconfig)
            if self._max_nodes is not None:
                await self.rest.merge_patch(DPU_CLUSTER, "dpu", {"spec": {"maxNodes": self._max_nodes}},
                                            self.namespace)
            await self.rest.merge_patch(DPU_CLUSTER, "dpu", {"status": {"phase": "Ready"}}, self.namespace,
                                        subresource="status")
            await self.create_bfb(BFB_NAME, BFB_FILE, ready=self._bfb_ready)
            if len(self.sockets) == 1:
                await self.start_controller()
            else:
                for index in range(len(self.sockets)):
                    await self.start_replica(index)
                await eventually(lambda: self.leader() is not None, "one replica leading and serving")
            self.start_agent()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        await self.stop_controller()
        self.emulator.stop()
        for node in self._nodes:
            with contextlib.suppress(KubeError):
                await self.rest.delete(NODE, node)
        await self.rest.close()

    async def start_controller(self) -> Controller:
        settings = insecure(controller_settings(self.kube.kubeconfig, self.namespace))
        settings = dataclasses.replace(settings, server=ServerSettings(listen=f"unix:{self.socket}", hello_timeout=5.0),
                                       provisioning=self._provisioning)
        reconcilers = [DPUClusterReconciler, HostNodeReconciler, DPUReconciler]
        if self._dpuset:
            reconcilers.append(DPUSetReconciler)
        self.controller = await started(Controller(settings, reconcilers=reconcilers))
        return self.controller

    async def start_replica(self, index: int) -> Controller:
        """Replica `index` (identity replica-<index>, on its own socket); it leads only if nobody does."""
        settings = insecure(controller_settings(self.kube.kubeconfig, self.namespace,
                                                identity=f"replica-{index}-{len(self.replicas)}"))
        settings = dataclasses.replace(settings, server=ServerSettings(listen=f"unix:{self.sockets[index]}",
                                                                       hello_timeout=5.0),
                                       provisioning=self._provisioning)
        reconcilers = [DPUClusterReconciler, HostNodeReconciler, DPUReconciler]
        if self._dpuset:
            reconcilers.append(DPUSetReconciler)
        replica = Controller(settings, reconcilers=reconcilers)
        await replica.start()
        self.replicas.append(replica)
        self._socket_index[id(replica)] = index
        return replica

    def free_socket(self) -> int:
        """The index of a socket no running replica serves on: where a new replica may start (two servers on one
        unix socket path would take it from each other, and the first to stop unlinks it)."""
        taken = {self._socket_index[id(r)] for r in self.replicas}
        return next(i for i in range(len(self.sockets)) if i not in taken)

    def leader(self) -> Controller | None:
        return next((r for r in self.replicas if r.is_leader and r.cache.ready.is_set()), None)

    async def crash(self, replica: Controller) -> None:
        """Stop `replica` as a crash would: its Lease is left held until it expires."""
        self.replicas.remove(replica)
        self._socket_index.pop(id(replica), None)
        await replica.stop(release=False)

    async def stop_controller(self) -> None:
        for replica in self.replicas:
            await replica.stop()
        self.replicas.clear()
        if self.controller is not None:
            controller, self.controller = self.controller, None
            await controller.stop()

    def start_agent(self) -> Child:
        if self.agent is not None:
            self.agent.respawn("host agent started again")
            return self.agent
        self.agent = Child("host-agent", [
            "ip", "netns", "exec", self.emulator.netns, sys.executable, "-m", "dpf.cli", "agent", "host", "--node",
            self.host, *(a for sock in self.sockets for a in ("--controller", f"unix:{sock}")), "--insecure",
            "--state-dir",
            str(self.workdir / "state"), "--sysroot", str(self.emulator.root), "--bfb-dir", str(self.bfb_dir),
            "--power-command", str(self.emulator.ipmitool), "--poll-interval", "0.5"], self.workdir / "agent.log")
        return self.agent

    def kill_agent(self) -> None:
        """SIGKILL: no goodbye, no clean release (the rshim lock dies with the process)."""
        assert self.agent is not None
        self.agent.proc.kill()
        self.agent.proc.wait(10)

    # ---- objects ----------------------------------------------------------------------------------------
    async def create_bfb(self, name: str, file_name: str, ready: bool = True, url: str = "") -> None:
        await self.rest.create(BFB, {"apiVersion": BFB.api_version, "kind": "BFB",
                                     "metadata": {"name": name, "namespace": self.namespace},
                                     "spec": {"url": url or f"https://example.com/{name}.bfb",
                                              "fileName": file_name}}, self.namespace)
        if ready:
            await self.bfb_ready(name)

    async def bfb_ready(self, name: str, phase: str = "Ready") -> None:
        await self.rest.merge_patch(BFB, name, {"status": {"phase": phase}}, self.namespace, subresource="status")

    def dpu_name(self, pci: str = "0000-08-00") -> str:
        return f"{self.host}-{pci}"

    async def create_dpu(self, name: str = "", pci: str = "0000-08-00", annotations: dict[str, str] | None = None,
                         **spec: Any) -> str:
        name = name or self.dpu_name(pci)
        body = {"apiVersion": DPU.api_version, "kind": "DPU",
                "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations or {}},
                "spec": {"nodeName": self.host, "bfb": BFB_NAME, "pciAddress": pci,
                         "nodeEffect": {"noEffect": True}, **spec}}
        await self.rest.create(DPU, body, self.namespace)
        return name

    async def dpu(self, name: str) -> Obj | None:
        return await self.rest.get(DPU, name, self.namespace)

    async def annotate_dpu(self, name: str, annotations: dict[str, str | None]) -> None:
        await self.rest.merge_patch(DPU, name, {"metadata": {"annotations": annotations}}, self.namespace)

    async def delete_dpu(self, name: str) -> None:
        await self.rest.delete(DPU, name, self.namespace)

    async def host_node(self) -> Obj:
        node = await self.rest.get(NODE, self.host)
        assert node is not None
        return node

    async def annotate_host(self, annotations: dict[str, str | None]) -> None:
        await self.rest.merge_patch(NODE, self.host, {"metadata": {"annotations": annotations}})

    async def join(self, name: str, ready: bool = True) -> None:
        """The DPU's Node in the DPU cluster, as its kubelet would register it (Ready or NotReady)."""
        if await self.rest.get(NODE, name) is None:
            await self.rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            self._nodes.append(name)
        status = "True" if ready else "False"
        await self.rest.merge_patch(NODE, name, {"status": {"conditions": [
            {"type": "Ready", "status": status, "reason": "KubeletReady" if ready else "KubeletNotReady",
             "message": "kubelet is posting ready status" if ready else "container runtime is down",
             "lastHeartbeatTime": "2026-12-04T20:00:00Z", "lastTransitionTime": "2026-12-04T20:00:00Z"}]}},
                                    subresource="status")

    # ---- looking ----------------------------------------------------------------------------------------
    async def wait_phase(self, name: str, phase: str, timeout: float = SLOW) -> Obj:  # noqa: ASYNC109
        async def reached() -> Obj | None:
            dpu = await self.dpu(name)
            return dpu if dpu is not None and phase_of(dpu) == phase else None

        try:
            return await eventually(reached, f"DPU {name} in phase {phase}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it is: {await self.describe(name)}") from None

    async def wait_condition(self, name: str, type_: str, reason: str, timeout: float = SLOW) -> Obj:  # noqa: ASYNC109
        async def reached() -> Obj | None:
            dpu = await self.dpu(name)
            c = condition(dpu, type_) if dpu is not None else None
            return c if c is not None and c.get("reason") == reason else None

        try:
            return await eventually(reached, f"DPU {name} condition {type_} reason {reason}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it is: {await self.describe(name)}") from None

    async def wait_gone(self, name: str, timeout: float = SLOW) -> None:  # noqa: ASYNC109
        async def gone() -> bool:
            return await self.dpu(name) is None

        try:
            await eventually(gone, f"DPU {name} gone", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it is: {await self.describe(name)}") from None

    async def until(self, predicate: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = SLOW,  # noqa: ASYNC109
                    dpu: str = "") -> Any:
        """`eventually`; on a timeout the message shows DPU `dpu`'s phase and conditions that are not True."""
        try:
            return await eventually(predicate, what, timeout)
        except AssertionError as exc:
            if not dpu:
                raise
            raise AssertionError(f"{exc}; DPU {dpu}: {await self.describe(dpu)}") from None

    async def holds(self, predicate: Callable[[], Awaitable[bool]], what: str, seconds: float) -> None:
        """`predicate` stays true for `seconds` (an assertion over a window: something must NOT happen)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            assert await predicate(), f"no longer {what}"
            await asyncio.sleep(0.1)

    async def describe(self, name: str) -> str:
        dpu = await self.dpu(name)
        if dpu is None:
            return "gone"
        status = dpu.get("status") or {}
        bad = [f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message', '')}"
               for c in status.get("conditions") or () if c.get("status") != "True"]
        host = await self.rest.get(NODE, self.host)
        described = json.dumps({"phase": status.get("phase"), "not true": bad,
                                "finalizers": dpu["metadata"].get("finalizers"),
                                "host labels": sorted(((host or {}).get("metadata") or {}).get("labels") or {})})
        # What a reader of a failure needs next: the host agent's own account (its HostInfo, its stream).
        return f"{described}\n--- host agent log (tail)\n{self.agent_log()}"

    def agent_log(self) -> str:
        return self.agent.log_tail(40) if self.agent is not None else ""

    async def events(self, name: str) -> list[Obj]:
        items = (await self.rest.list(EVENT, self.namespace))["items"]
        return [e for e in items if (e.get("regarding") or e.get("involvedObject") or {}).get("name") == name]


def phase_of(dpu: Obj) -> str:
    return (dpu.get("status") or {}).get("phase") or ""


def condition(dpu: Obj, type_: str) -> Obj | None:
    return next((c for c in (dpu.get("status") or {}).get("conditions") or () if c.get("type") == type_), None)


def record(dpu: Obj) -> dict[str, Any]:
    return json.loads((dpu["metadata"].get("annotations") or {}).get(ph.RECORD_ANNOTATION) or "{}")
