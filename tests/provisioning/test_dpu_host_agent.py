"""A DPU provisioned by the real pieces: the controller's DPU reconciler (with the host-node labeller and the
DPUCluster connector) against the real apiserver, and the real host agent (`dpf agent host`, its own process in
an emulated host's network namespace, over a unix-socket NodeState stream) flashing the emulated BlueField,
rebooting the emulated host through its power interface and wiring VF0 into br-dpu. Only the DPU's Node in the
DPU cluster is made by the test (the join itself is the lab's kubelet, tested elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

# The host agent and the host-node labeller are built alongside; this runs once they are merged.
pytest.importorskip("dpf.agent.host.main")
pytest.importorskip("dpf.controller.reconcilers.hostnode")

from dpf.controller.kube.rest import KubeError, Obj, Rest
from dpf.controller.manager import Controller
from dpf.controller.provisioning import dpu_phases as ph
from dpf.controller.reconcilers.dpu import DPUReconciler
from dpf.controller.reconcilers.dpucluster import DPUClusterReconciler
from dpf.controller.reconcilers.dpuset import DPUSetReconciler
from dpf.controller.reconcilers.hostnode import HostNodeReconciler
from dpf.controller.reconcilers.kinds import BFB, DPU, DPU_CLUSTER, DPU_FLAVOR, DPU_SET, NODE
from dpf.controller.settings import ControllerSettings, ServerSettings
from dpf.lab.bed.kube import ControlPlane
from dpf.lab.bed.process import Child
from tests.api.helpers import example_documents
from tests.controlplane.harness import (
    controller_settings,
    dpu_cluster,
    eventually,
    host_rest,
    insecure,
    run,
    started,
)
from tests.hostagent.harness import EmulatorProcess, image

SLOW = 90.0


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


def _emulated_host(tmp_path: Path) -> tuple[Path, Path]:
    """The BFB directory with an 8 MiB emulated image `os.bfb`, and the controller's socket path."""
    bfb_dir = tmp_path / "bfb"
    image(bfb_dir, "os.bfb")
    return bfb_dir, tmp_path / "controller.sock"


def _oob_bridge(netns: str) -> None:
    ip(netns, "link", "add", "br-dpu", "type", "bridge")
    ip(netns, "addr", "add", "192.0.2.1/24", "dev", "br-dpu")
    ip(netns, "link", "set", "br-dpu", "up")


def _host_agent(emulator: EmulatorProcess, host: str, socket: Path, bfb_dir: Path, tmp_path: Path) -> Child:
    return Child("host-agent", ["ip", "netns", "exec", emulator.netns, sys.executable, "-m", "dpf.cli", "agent",
                                "host", "--node", host, "--controller", f"unix:{socket}", "--insecure",
                                "--state-dir", str(tmp_path / "state"), "--sysroot", str(emulator.root),
                                "--bfb-dir", str(bfb_dir), "--power-command", str(emulator.ipmitool),
                                "--poll-interval", "0.5"], tmp_path / "agent.log")


def _settings(kube: ControlPlane, namespace: str, socket: Path) -> ControllerSettings:
    settings = insecure(controller_settings(kube.kubeconfig, namespace))
    return dataclasses.replace(settings, server=ServerSettings(listen=f"unix:{socket}", hello_timeout=5.0))


async def _phase(rest: Rest, namespace: str, name: str, phase: str) -> Obj | None:
    dpu = await rest.get(DPU, name, namespace)
    return dpu if dpu is not None and (dpu.get("status") or {}).get("phase") == phase else None


def test_the_host_agent_provisions_a_dpu_through_every_phase(kube: ControlPlane, namespace: str,
                                                             tmp_path: Path) -> None:
    host = f"{namespace}-host"[-63:]
    name = f"{host}-0000-08-00"

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        bfb_dir, socket = _emulated_host(tmp_path)
        emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
        netns = emulator.netns
        _oob_bridge(netns)
        settings = _settings(kube, namespace, socket)
        controller = agent = None
        try:
            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": host}})
            await dpu_cluster(rest, namespace, kube.kubeconfig)
            await rest.merge_patch(DPU_CLUSTER, "dpu", {"status": {"phase": "Ready"}}, namespace,
                                   subresource="status")
            await rest.create(BFB, {"apiVersion": BFB.api_version, "kind": "BFB",
                                    "metadata": {"name": "bf-bundle", "namespace": namespace},
                                    "spec": {"url": "https://example.com/doca-2.9.bfb", "fileName": "os.bfb"}},
                              namespace)
            await rest.merge_patch(BFB, "bf-bundle", {"status": {"phase": "Ready"}}, namespace, subresource="status")
            await rest.create(DPU_FLAVOR, {"apiVersion": DPU_FLAVOR.api_version, "kind": "DPUFlavor",
                                           "metadata": {"name": "vfs", "namespace": namespace},
                                           "spec": {"nvconfig": [{"device": "*", "parameters": ["NUM_OF_VFS=4"]}]}},
                              namespace)
            controller = await started(Controller(settings, reconcilers=[
                DPUClusterReconciler, HostNodeReconciler, DPUReconciler]))
            agent = _host_agent(emulator, host, socket, bfb_dir, tmp_path)
            await rest.create(DPU, {"apiVersion": DPU.api_version, "kind": "DPU",
                                    "metadata": {"name": name, "namespace": namespace},
                                    "spec": {"nodeName": host, "bfb": "bf-bundle", "pciAddress": "0000-08-00",
                                             "dpuFlavor": "vfs", "nodeEffect": {"noEffect": True}}}, namespace)
            boot_id = emulator.boot_id
            dpu = await eventually(lambda: _phase(rest, namespace, name, ph.CLUSTER_CONFIG),
                                   "DPU Cluster Config, through the host agent", SLOW)
            assert emulator.boot_id != boot_id  # rebooted through the power interface
            assert emulator.power_actions() == ["reset"]
            vf0 = ip(netns, "-d", "link", "show", "ens1f0v0")
            assert "master br-dpu" in vf0
            assert (emulator.root / "sys/bus/pci/devices/0000:08:00.0/sriov_numvfs").read_text().strip() == "4"

            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            await rest.merge_patch(NODE, name, {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                 "lastHeartbeatTime": "2026-12-04T20:00:00Z", "lastTransitionTime": "2026-12-04T20:00:00Z"}]}},
                                   subresource="status")
            dpu = await eventually(lambda: _phase(rest, namespace, name, ph.READY), "Ready", SLOW)
            assert all(c["status"] == "True" for c in dpu["status"]["conditions"]), dpu["status"]

            await rest.delete(DPU, name, namespace)
            await eventually(lambda: _gone(rest, namespace, name), "the DPU gone", SLOW)
            await eventually(lambda: "ens1f0v0" not in ip(netns, "link", "show"), "the host network undone", SLOW)
            agent.check_alive()
        finally:
            if agent is not None:
                agent.stop()
            if controller is not None:
                await controller.stop()
            emulator.stop()
            for node in (host, name):
                with contextlib.suppress(KubeError):
                    await rest.delete(NODE, node)
            await rest.close()

    run(scenario(), timeout=300)


async def _gone(rest: Rest, namespace: str, name: str) -> bool:
    return await rest.get(DPU, name, namespace) is None


def test_upstreams_dpuset_provisions_the_detected_dpu(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """As a user would: the hbn_only guide's BFB and DPUSet (the taint node effect) on a host whose agent
    reports its BlueField; the host Node's labels come from that report, the DPUSet makes the DPU, the DPU
    reconciler provisions it. The guide's flavor asks for 46 VFs, more than the emulated PF's 16: the test's
    flavor of that name asks for 4."""
    host = f"{namespace}-host"[-63:]

    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        bfb_dir, socket = _emulated_host(tmp_path)
        emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
        netns = emulator.netns
        _oob_bridge(netns)
        settings = _settings(kube, namespace, socket)
        controller = agent = None
        name = ""
        try:
            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node",
                                     "metadata": {"name": host, "labels": {"dpf.test/fleet": namespace}}})
            await dpu_cluster(rest, namespace, kube.kubeconfig)
            await rest.merge_patch(DPU_CLUSTER, "dpu", {"status": {"phase": "Ready"}}, namespace,
                                   subresource="status")
            documents = {d["kind"]: d for d in example_documents("hbn_only.yaml", namespace)}
            bfb = documents["BFB"]
            bfb["spec"]["fileName"] = "os.bfb"  # the emulated image the agent finds in its BFB directory
            await rest.create(BFB, bfb, namespace)
            await rest.merge_patch(BFB, bfb["metadata"]["name"], {"status": {"phase": "Ready"}}, namespace,
                                   subresource="status")
            flavor = documents["DPUFlavor"]
            await rest.create(DPU_FLAVOR, {**flavor, "spec": {"nvconfig": [{"device": "*", "parameters": [
                "NUM_OF_VFS=4"]}]}}, namespace)
            dpuset = documents["DPUSet"]
            dpuset["spec"]["nodeSelector"]["matchLabels"]["dpf.test/fleet"] = namespace
            controller = await started(Controller(settings, reconcilers=[
                DPUClusterReconciler, HostNodeReconciler, DPUSetReconciler, DPUReconciler]))
            agent = _host_agent(emulator, host, socket, bfb_dir, tmp_path)
            await rest.create(DPU_SET, dpuset, namespace)
            name = f"{host}-0000-08-00"
            await eventually(lambda: _phase(rest, namespace, name, ph.CLUSTER_CONFIG), "DPU Cluster Config", SLOW)
            tainted = await rest.get(NODE, host)
            assert any(t["key"] == "dpu" for t in (tainted or {})["spec"].get("taints") or ())  # still provisioning
            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            await rest.merge_patch(NODE, name, {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                 "lastHeartbeatTime": "2026-12-04T20:00:00Z", "lastTransitionTime": "2026-12-04T20:00:00Z"}]}},
                                   subresource="status")
            await eventually(lambda: _phase(rest, namespace, name, ph.READY), "Ready", SLOW)
            await eventually(lambda: _untainted(rest, host), "the taint removed at Ready", SLOW)
            status = await eventually(lambda: _dpuset_ready(rest, namespace), "the DPUSet counting a Ready DPU")
            assert status["dpuStatistics"] == {"Ready": 1}
            agent.check_alive()
        finally:
            if agent is not None:
                agent.stop()
            if controller is not None:
                await controller.stop()
            emulator.stop()
            for node in (host, name):
                if node:
                    with contextlib.suppress(KubeError):
                        await rest.delete(NODE, node)
            await rest.close()

    run(scenario(), timeout=300)


async def _untainted(rest: Rest, host: str) -> bool:
    node = await rest.get(NODE, host)
    return node is not None and not any(t["key"] == "dpu" for t in node["spec"].get("taints") or ())


async def _dpuset_ready(rest: Rest, namespace: str) -> Obj | None:
    status = ((await rest.get(DPU_SET, "dpuset", namespace)) or {}).get("status") or {}
    return status if (status.get("dpuStatistics") or {}).get("Ready") == 1 else None


def test_a_restart_mid_flash_does_not_flash_again_and_deletion_mid_flash_cuts_it(
        kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    host = f"{namespace}-host"[-63:]
    name = f"{host}-0000-08-00"

    async def scenario() -> None:
        from dpf.lab.emulator.control import request

        rest = await host_rest(kube.kubeconfig)
        bfb_dir, socket = _emulated_host(tmp_path)
        emulator = await EmulatorProcess(tmp_path / "host", tmp_path / "emulator.log").started()
        _oob_bridge(emulator.netns)
        settings = _settings(kube, namespace, socket)
        controller = agent = None
        try:
            await rest.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": host, "annotations": {ph.REBOOT_COMMAND_ANNOTATION: "skip"}}})
            await dpu_cluster(rest, namespace, kube.kubeconfig)
            await rest.merge_patch(DPU_CLUSTER, "dpu", {"status": {"phase": "Ready"}}, namespace,
                                   subresource="status")
            await rest.create(BFB, {"apiVersion": BFB.api_version, "kind": "BFB",
                                    "metadata": {"name": "bf-bundle", "namespace": namespace},
                                    "spec": {"url": "https://example.com/doca-2.9.bfb", "fileName": "os.bfb"}},
                              namespace)
            await rest.merge_patch(BFB, "bf-bundle", {"status": {"phase": "Ready"}}, namespace, subresource="status")
            await asyncio.to_thread(request, emulator.control, {"op": "faults", "dpu": 0, "set": {"rate": 1_000_000}})
            boots = (await emulator.status())["dpus"][0]["boots"]
            controller = await started(Controller(settings, reconcilers=[
                DPUClusterReconciler, HostNodeReconciler, DPUReconciler]))
            agent = _host_agent(emulator, host, socket, bfb_dir, tmp_path)
            dpu_body = {"apiVersion": DPU.api_version, "kind": "DPU",
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {"nodeName": host, "bfb": "bf-bundle", "pciAddress": "0000-08-00",
                                 "nodeEffect": {"noEffect": True}}}
            await rest.create(DPU, dpu_body, namespace)
            dpu = await eventually(lambda: _flashing(rest, namespace, name), "the flash under way", SLOW)
            install = ph.record_of(dpu, _now()).install

            await controller.stop()  # mid-flash: a new controller takes over
            controller = await started(Controller(settings, reconcilers=[
                DPUClusterReconciler, HostNodeReconciler, DPUReconciler]))
            dpu = await eventually(lambda: _phase(rest, namespace, name, ph.CLUSTER_CONFIG), "the install done",
                                   SLOW)
            assert ph.record_of(dpu, _now()).install == install
            status = (await emulator.status())["dpus"][0]
            assert status["boots"] == boots + 1  # one flash, one boot of what it received
            assert status["version"]

            await rest.delete(DPU, name, namespace)
            await eventually(lambda: _gone(rest, namespace, name), "the DPU gone", SLOW)
            await rest.create(DPU, dpu_body, namespace)  # again, as a rolling update re-creates it
            await eventually(lambda: _flashing(rest, namespace, name), "the second flash under way", SLOW)
            await rest.delete(DPU, name, namespace)  # mid-flash
            await eventually(lambda: _gone(rest, namespace, name), "the DPU deleted mid-flash gone", SLOW)
            await eventually(lambda: not (emulator.root / "dev/rshim0/.holder").exists(), "the rshim released")
            status = (await emulator.status())["dpus"][0]
            assert status["bytes"] < 8 << 20  # the stream was cut, not finished
            assert status["boots"] == boots + 1  # and nothing half-written booted
            agent.check_alive()
        finally:
            if agent is not None:
                agent.stop()
            if controller is not None:
                await controller.stop()
            emulator.stop()
            with contextlib.suppress(KubeError):
                await rest.delete(NODE, host)
            await rest.close()

    run(scenario(), timeout=300)


async def _flashing(rest: Rest, namespace: str, name: str) -> Obj | None:
    dpu = await rest.get(DPU, name, namespace)
    message = next((c.get("message", "") for c in ((dpu or {}).get("status") or {}).get("conditions") or ()
                    if c["type"] == "OSInstalled"), "")
    return dpu if message.startswith("flashing ") and " at " in message else None


def _now() -> datetime:
    return datetime.now(UTC)
