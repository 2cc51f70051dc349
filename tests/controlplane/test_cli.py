"""The command line: `dpf controller issue-node-cert` writes a node's mTLS files, `dpf agent --once` uses them
to fetch, record and ACK the node's desired state, and every subcommand explains its flags."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from dpf.controller.manager import Controller
from dpf.controller.reconcilers.kinds import SERVICE_INTERFACE
from dpf.lab.bed.kube import ControlPlane

from .harness import controller_settings, dpu_cluster, eventually, host_rest, run, service_interface, started

DPF = [sys.executable, "-m", "dpf.cli"]


async def _dpf(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*DPF, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def test_help_explains_the_flags() -> None:
    for command in (["controller", "run"], ["controller", "issue-node-cert"], ["agent"]):
        result = subprocess.run([*DPF, *command, "--help"], capture_output=True, text=True, timeout=30, check=True)
        assert "--" in result.stdout
    agent_help = subprocess.run([*DPF, "agent", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--once" in agent_help
    assert "fails over" in " ".join(agent_help.split())
    run_help = subprocess.run([*DPF, "controller", "run", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--insecure" in run_help
    assert "LAB ONLY" in run_help


def test_agent_without_certificates_is_refused_with_the_fix(tmp_path: Path) -> None:
    result = subprocess.run([*DPF, "agent", "--node", "n", "--role", "dpu", "--controller", "127.0.0.1:1",
                             "--state-dir", "/tmp/unused", "--record", "ServiceInterface"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--ca, --cert, --key required (or --insecure for a lab)" in result.stderr
    for kind in ("dpu", "host"):  # the node agents: the same refusal, named by their command
        result = subprocess.run([*DPF, "agent", kind, "--node", "n", "--controller", "127.0.0.1:1",
                                 "--state-dir", str(tmp_path / kind)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip() == (f"dpf agent {kind}: error: --ca, --cert, --key required "
                                         "(or --insecure for a lab)")


def test_a_bad_chart_mirror_is_refused_naming_the_flag_and_the_form() -> None:
    result = subprocess.run([*DPF, "controller", "run", "--insecure", "--chart-mirror", "helm.ngc.nvidia.com"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--chart-mirror 'helm.ngc.nvidia.com': want FROM=TO" in result.stderr


def test_issue_node_cert_then_agent_once(kube: ControlPlane, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        rest = await host_rest(kube.kubeconfig)
        await dpu_cluster(rest, namespace, kube.kubeconfig)
        controller = Controller(controller_settings(kube.kubeconfig, namespace))
        await started(controller)
        node = f"dpu-c-{uuid.uuid4().hex[:6]}"
        try:
            code, out, err = await _dpf("controller", "issue-node-cert", "--kubeconfig", str(kube.kubeconfig),
                                        "--namespace", namespace, "--node", node, "--role", "dpu",
                                        "--out", str(tmp_path / "certs"))
            assert code == 0, err
            assert (tmp_path / "certs" / "tls.key").stat().st_mode & 0o077 == 0
            await rest.create(SERVICE_INTERFACE, service_interface(namespace, "uplink", node, "p0"), namespace)
            await eventually(lambda: controller.cache.get(node, controller.reconcilers[1].type_urls[0]).resources,
                             "the node's snapshot")
            code, out, err = await _dpf("agent", "--once", "--node", node, "--role", "dpu",
                                        "--controller", f"127.0.0.1:{controller.grpc_port}",
                                        "--state-dir", str(tmp_path / "state"), "--record", "ServiceInterface",
                                        "--ca", str(tmp_path / "certs" / "ca.crt"),
                                        "--cert", str(tmp_path / "certs" / "tls.crt"),
                                        "--key", str(tmp_path / "certs" / "tls.key"))
            assert code == 0, err
            assert "type.googleapis.com/dpf.v1.ServiceInterface: ACK" in out
            assert f"  {namespace}/uplink " in out
            assert list((tmp_path / "state").glob("dpf.v1.ServiceInterface-*.json"))
        finally:
            await controller.stop()
            await rest.close()

    run(scenario())
