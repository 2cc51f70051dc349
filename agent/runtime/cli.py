"""`dpf agent`: run the agent runtime for one node (or `--once`: sync the desired state once and exit).

Handlers: the host and DPU agents register their own; this generic entry point can `--record` types
(keep the desired state on disk, apply nothing), which is what `--once` debugging and the fan-out
benchmark use.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from dpf.agent.runtime.settings import AgentSettings, TLSFiles
from dpf.shared.logs import add_logging_flags, setup_logging

if TYPE_CHECKING:
    from collections.abc import Callable

    from dpf.agent.runtime.runtime import AgentRuntime


RECORDABLE = {"ServiceInterface": ("dpf.proto.v1.sfc_pb2", "ServiceInterface")}

_S = TypeVar("_S")


class NodeAgent(Protocol):
    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set (0) or the agent fails (non-zero)."""
        ...


def run_node_agent(args: argparse.Namespace, command: str, settings: Callable[[argparse.Namespace], _S],
                   agent: Callable[[_S], NodeAgent]) -> int:
    """What `dpf agent dpu` and `dpf agent host` do once parsed: set up logging, build the settings and the agent
    (a ValueError there is bad input: `<command>: error: ...`, exit 2), then run it until SIGTERM or SIGINT."""
    setup_logging(args.log_level, args.log_format)
    try:
        config = settings(args)
    except ValueError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            instance = agent(config)
        except ValueError as exc:
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
        return await instance.run(stop)

    return asyncio.run(serve())


def add_connection_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    """The flags every agent needs to reach the controller as one node (shared with `dpf agent dpu`)."""
    parser.add_argument("--node", required=required, help="this node's name (must equal the certificate CN)")
    parser.add_argument("--controller", action="append", required=required, metavar="HOST:PORT",
                        help="a controller replica (repeat for each; the agent fails over between them); "
                             "unix:PATH for a unix socket")
    parser.add_argument("--state-dir", type=Path, required=required, help="directory for the last applied state")
    parser.add_argument("--ca", type=Path, help="CA certificate of the controller (from issue-node-cert)")
    parser.add_argument("--cert", type=Path, help="this node's client certificate")
    parser.add_argument("--key", type=Path, help="this node's private key")
    parser.add_argument("--server-name", default="", help="expected name in the controller's certificate")
    parser.add_argument("--insecure", action="store_true", help="plain-text gRPC, no certificate (LAB ONLY)")
    parser.add_argument("--http-listen", default="", help="host:port for /healthz, /readyz, /metrics")
    add_logging_flags(parser)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "agent", help="run a node agent (host or DPU) against the controller",
        description="Connect to the controller's NodeState stream as one node, apply its desired state through "
                    "the registered handlers, persist what was applied (re-asserted at start-up, even with the "
                    "controller down) and report ACK/NACK and status. `dpf agent dpu` is the DPU agent "
                    "(OVS ports and flows, CNI server), `dpf agent host` the host agent (flash, reboot, host "
                    "network); plain `dpf agent` only records (--record).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_connection_flags(parser, required=False)  # required unless a subcommand is given; checked in _run
    parser.add_argument("--role", choices=("host", "dpu"), help="agent role")
    parser.add_argument("--record", action="append", default=[], choices=sorted(RECORDABLE),
                        help="handle this type by recording it only (no data-plane changes); repeatable")
    parser.add_argument("--once", action="store_true",
                        help="fetch the full desired state once, apply, ACK, print a summary and exit")
    parser.add_argument("--once-timeout", type=float, default=30.0, help="seconds --once waits for a controller")
    parser.set_defaults(run=_run, agent_parser=parser)
    kinds = parser.add_subparsers(dest="agent_kind", metavar="KIND")
    from dpf.agent.dpu import cli as dpu_cli  # light: argparse only, the agent is imported when it runs
    from dpf.agent.host import cli as host_cli

    dpu_cli.register(kinds)
    host_cli.register(kinds)


def _handlers(args: argparse.Namespace) -> list:
    import importlib

    from dpf.agent.runtime.handlers import RecordingHandler

    handlers = []
    for name in args.record:
        module, cls = RECORDABLE[name]
        handlers.append(RecordingHandler(getattr(importlib.import_module(module), cls)))
    return handlers



def _run(args: argparse.Namespace) -> int:
    from dpf.agent.runtime.runtime import AgentRuntime

    missing = [flag for flag, value in (("--node", args.node), ("--role", args.role),
                                        ("--controller", args.controller), ("--state-dir", args.state_dir))
               if not value]
    if missing:
        args.agent_parser.error(f"the following arguments are required: {', '.join(missing)}")
    setup_logging(args.log_level, args.log_format)
    try:
        settings = settings_from(args)
        handlers = _handlers(args)
        if not handlers:
            raise ValueError("no handler: this generic entry point needs --record TYPE (the host and DPU agents "
                             "register their own handlers)")
        runtime = AgentRuntime(settings, handlers)
    except ValueError as exc:
        print(f"dpf agent: error: {exc}", file=sys.stderr)
        return 2
    if args.once:
        return asyncio.run(_once(runtime, args.once_timeout))
    return asyncio.run(_forever(runtime))


async def _once(runtime: AgentRuntime, timeout: float) -> int:  # noqa: ASYNC109 - the --once deadline
    try:
        results = await runtime.run_once(timeout)
    except TimeoutError as exc:
        print(f"dpf agent --once: {exc}", file=sys.stderr)
        return 1
    for type_url, result in sorted(results.items()):
        applier = runtime.appliers[type_url]
        print(f"{type_url}: {result} ({len(applier.state.resources)} resources)")
        for name in sorted(applier.state.resources):
            print(f"  {name} {applier.state.resources[name].version}")
    return 1 if any(r.startswith("NACK") for r in results.values()) else 0


async def _forever(runtime: AgentRuntime) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    main = asyncio.create_task(runtime.run(), name="agent/runtime")
    waiter = asyncio.create_task(stop.wait(), name="agent/signal")
    done, _ = await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in (main, waiter):
        task.cancel()
    await asyncio.gather(main, waiter, return_exceptions=True)
    if main in done and main.exception() is not None:
        logging.getLogger("dpf.agent").error("agent runtime crashed: %r", main.exception())
        return 1
    return 0


def settings_from(args: argparse.Namespace) -> AgentSettings:
    tls = None
    if not args.insecure:
        missing = [flag for flag, value in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key))
                   if value is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (or --insecure for a lab)")
        tls = TLSFiles(args.ca, args.cert, args.key, args.server_name)
    return AgentSettings(node=args.node, role=args.role, endpoints=tuple(args.controller), state_dir=args.state_dir,
                         tls=tls, insecure=args.insecure, http_listen=args.http_listen)
