"""The host agent's systemd unit: systemd accepts it (`verify`, no warnings; `security` scores its hardening),
and its ExecStart is a command line `dpf agent host`'s own argparse takes, with the unit's state directory.
The agent is never started."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpf.agent.host import cli as host_cli
from dpf.agent.runtime import cli as agent_cli
from dpf.lab.bed.tools import REPO
from tests.packaging.test_systemd import unit_entries

UNIT = REPO / "systemd" / "dpf-host-agent.service"
INSTALLED_DPF = "/opt/dpf/bin/dpf"
EXPOSURE_LIMIT = 4.0  # measured 3.1 (it writes sysfs and rshim devices, so less is locked down than the DPU's)


def values(key: str) -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == "Service" and k == key]


def test_exec_start_parses_with_the_host_agents_argparse() -> None:
    env: dict[str, str] = {}
    for line in values("Environment"):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value.replace("%l", "host-7")
    env.update(DPF_CONTROLLER="10.0.0.1:5443", DPF_POWER_COMMAND="ipmitool -I lanplus -H bmc7 -U admin -P pw")
    (command,) = values("ExecStart")
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w.replace("%l", "host-7"))
            for w in shlex.split(command)]
    assert argv[0] == INSTALLED_DPF
    parser = argparse.ArgumentParser(prog="dpf")
    agent_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert args.run is host_cli._run, "ExecStart must select `dpf agent host`"
    settings = host_cli.settings(args)
    assert settings.agent.node == "host-7"
    assert settings.agent.role == "host"
    assert settings.agent.tls is not None
    assert not settings.agent.insecure
    assert settings.power_command == "ipmitool -I lanplus -H bmc7 -U admin -P pw"  # one argument, split later
    assert settings.sysroot == Path("/")
    (state_directory,) = values("StateDirectory")
    assert settings.records.is_relative_to(Path("/var/lib") / state_directory)
    assert settings.bfb_dir.is_relative_to(Path("/var/lib") / state_directory)


def test_the_help_explains_what_the_host_agent_does() -> None:
    result = subprocess.run([sys.executable, "-m", "dpf.cli", "agent", "host", "--help"], capture_output=True,
                            text=True, check=True, timeout=60)
    for phrase in ("rshim", "ExistingRshimInstallDetected", "DPU is ready", "chassis power cycle|reset",
                   "--bfb-dir", "--power-command", "--sysroot", "HostInfo"):
        assert phrase in result.stdout, phrase


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_DPF, str(Path(sys.executable).parent / "dpf")))
    return unit


def test_systemd_accepts_the_unit_and_rates_its_hardening(checkable_unit: Path) -> None:
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(checkable_unit)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout + verify.stderr == ""
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(checkable_unit)],
                              capture_output=True, text=True, check=False, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr)
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, security.stdout
