"""The `dpf` command: entry point for the lab and, later, the controller and agents."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dpf",
        description="dpf: provision BlueField DPUs and run service-function chains from Kubernetes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # Imported here, not at the top: `dpf --help` should not pay for grpc and the Kubernetes clients.
    from dpf.agent.runtime import cli as agent_cli
    from dpf.controller import cli as controller_cli
    from dpf.lab import cli as lab_cli

    for module in (lab_cli, controller_cli, agent_cli):
        module.register(commands)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
