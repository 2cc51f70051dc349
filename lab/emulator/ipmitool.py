"""An `ipmitool`-shaped command backed by an emulated host: `ipmitool [opts] chassis power <cmd>`.

Installed per emulated host as `<root>/usr/bin/ipmitool` (a shell wrapper naming the host's control socket),
so a host agent calls it exactly as it would call the real tool. Connection options (`-I lanplus -H host
-U user -P pass`, ...) are accepted and ignored. Output and exit codes follow ipmitool's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dpf.lab.emulator.control import request

_OPTS_WITH_VALUE = {"-I", "-H", "-U", "-P", "-p", "-L", "-A", "-C", "-y", "-k", "-f", "-R", "-N", "-E"}
_CONTROL = {"cycle": "Cycle", "reset": "Reset", "on": "Up/On", "off": "Down/Off"}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--socket":
        print("usage: ipmitool --socket PATH [options] chassis power status|on|off|cycle|reset", file=sys.stderr)
        return 1
    socket_path = Path(args[1])
    rest = args[2:]
    words: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] in _OPTS_WITH_VALUE:
            i += 2
            continue
        if not rest[i].startswith("-"):
            words.append(rest[i])
        i += 1
    if words[:2] != ["chassis", "power"] or len(words) != 3 or words[2] not in {"status", *_CONTROL}:
        print("chassis power Commands: status, on, off, cycle, reset", file=sys.stderr)
        return 1
    action = words[2]
    reply = request(socket_path, {"op": "power", "action": action})
    if not reply.get("ok"):
        print(f"Set Chassis Power Control to {_CONTROL.get(action, action)} failed: {reply.get('error')}",
              file=sys.stderr)
        return 1
    if action == "status":
        print(f"Chassis Power is {reply['power']}")
    else:
        print(f"Chassis Power Control: {_CONTROL[action]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
