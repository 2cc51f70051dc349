"""The host's power interface, `ipmitool`-shaped: `<command> chassis power cycle|reset`.

The command is configurable (`--power-command`, e.g. "ipmitool -I lanplus -H bmc -U admin -P secret"); on a
host that reboots itself through its own BMC the agent dies with the host, which is why the caller records a
reboot id as issued *before* running it (at most once per id, even across that restart).
"""

from __future__ import annotations

import shlex
import subprocess

from dpf.proto.v1 import provisioning_pb2 as ppb

ACTIONS = {ppb.REBOOT_METHOD_POWER_CYCLE: "cycle", ppb.REBOOT_METHOD_POWER_RESET: "reset"}
TIMEOUT_SECONDS = 60.0


def power_action(command: str, method: int, timeout: float = TIMEOUT_SECONDS) -> str:
    """Run `<command> chassis power <cycle|reset>`; returns "" on success, else the error to report."""
    action = ACTIONS.get(method)  # type: ignore[call-overload]
    if action is None:
        return f"reboot method {method} is not one of power cycle, power reset"
    argv = [*shlex.split(command), "chassis", "power", action]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"power command {argv[0]!r} not found"
    except subprocess.TimeoutExpired:
        return f"{shlex.join(argv)} did not finish within {timeout:.0f}s"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        return f"{shlex.join(argv)} failed: {why}"
    return ""
