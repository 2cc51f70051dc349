"""The DPU agent's systemd unit: systemd itself accepts it (`systemd-analyze verify`, and `security` scores
its hardening), and its ExecStart is a command line the agent's own argparse takes, agreeing with the unit's
state, runtime and OVS directories and with the CNI shim's socket. The agent is never started."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpf.agent.dpu import cli as dpu_cli
from dpf.agent.runtime import cli as agent_cli
from dpf.cni import wire
from dpf.lab.bed.tools import REPO

UNIT = REPO / "systemd" / "dpf-agent-dpu.service"
INSTALLED_DPF = "/opt/dpf/bin/dpf"
EXPOSURE_LIMIT = 4.0  # systemd-analyze security's 0-10 scale; measured 2.8 (an unhardened unit: 9.6)


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order: comments skipped, backslash continuations joined."""
    entries, section, pending = [], "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(key: str) -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == "Service" and k == key]


def exec_start_argv(env: dict[str, str], hostname: str) -> list[str]:
    """ExecStart as systemd would run it: %l is the short hostname, ${VAR} a variable of the unit."""
    (command,) = values("ExecStart")
    words = [w.replace("%l", hostname) for w in shlex.split(command)]
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words]


def unit_environment() -> dict[str, str]:
    env = {}
    for line in values("Environment"):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def test_exec_start_parses_with_the_agents_argparse() -> None:
    env = {**unit_environment(), "DPF_CONTROLLER": "10.0.0.1:5443"}  # what /etc/dpf/agent-dpu.env adds
    env = {k: v.replace("%l", "dpu-7") for k, v in env.items()}
    argv = exec_start_argv(env, hostname="dpu-7")
    assert argv[0] == INSTALLED_DPF
    parser = argparse.ArgumentParser(prog="dpf")  # the top level of dpf/cli.py, with the agent's commands
    agent_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert args.run is dpu_cli._run, "ExecStart must select `dpf agent dpu`"
    settings = dpu_cli.settings(args)  # the agent's own validation (mTLS files named, and so on)

    agent = settings.agent
    assert agent.node == "dpu-7"
    assert agent.endpoints == ("10.0.0.1:5443",)
    assert not agent.insecure
    assert agent.tls is not None
    assert agent.tls.server_name == "dpf-controller.dpf-operator-system.svc"
    (state_directory,) = values("StateDirectory")
    assert agent.state_dir.parent == Path("/var/lib") / state_directory
    assert settings.cni is not None, "the DPU unit serves the SFC CNI plugin"
    assert settings.cni.socket == Path(wire.DEFAULT_SOCKET), "the shim looks for the agent there by default"
    assert settings.cni.state_dir.is_relative_to(Path("/var/lib") / state_directory)
    (runtime_directory,) = values("RuntimeDirectory")
    assert settings.cni.socket.is_relative_to(Path("/run") / runtime_directory)
    ovs_rundir = Path("/run") / settings.sfc.ovs_rundir.relative_to("/var/run")
    assert str(ovs_rundir) in values("ReadWritePaths"), "ovs-ofctl monitor makes its socket in the OVS run dir"


def test_exec_start_pre_names_a_missing_controller_address() -> None:
    (pre,) = values("ExecStartPre")
    argv = [w.replace("$$", "$") for w in shlex.split(pre)]  # systemd's escape for a literal $
    missing = subprocess.run(argv, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    assert "set DPF_CONTROLLER=host:port in /etc/dpf/agent-dpu.env" in missing.stderr
    present = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "DPF_CONTROLLER": "10.0.0.1:5443"},
                             capture_output=True, text=True, check=False)
    assert present.returncode == 0, present.stderr


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's dpf: `verify` checks that the binary exists."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    dpf = Path(sys.executable).parent / "dpf"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_DPF, str(dpf)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(checkable_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(checkable_unit)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "no warnings either (an unknown key is only a warning)"


def test_systemd_analyze_security_rates_the_hardening(checkable_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(checkable_unit)],
                            capture_output=True, text=True, check=False, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, result.stdout
