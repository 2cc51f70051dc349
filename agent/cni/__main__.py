"""Run the agent's CNI server on its own: `python -m dpf.agent.cni --pools pools.json ...`.

The DPU agent runtime embeds `CniServer` and fills the pool blocks from the controller's stream;
this entry point serves the same socket with the blocks read from a JSON file (a list of
`dpf.agent.ipam.model.block_from_dict` objects; SIGHUP re-reads it). Used by the tests and the
benchmark, and handy for debugging a node by hand. Ends cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path

from dpf.agent.cni.attach import Attacher
from dpf.agent.cni.ovs_ports import OvsPorts
from dpf.agent.cni.server import CniServer
from dpf.agent.cni.settings import CniSettings
from dpf.agent.ipam.model import blocks_from_json
from dpf.agent.ipam.service import IpamService, open_service

log = logging.getLogger("dpf.agent.cni")


def parse_args(argv: list[str] | None = None) -> tuple[CniSettings, Path | None]:
    defaults = CniSettings()
    p = argparse.ArgumentParser(prog="python -m dpf.agent.cni", description=__doc__.splitlines()[0])
    p.add_argument("--socket", type=Path, default=defaults.socket)
    p.add_argument("--ovsdb", default=defaults.ovsdb)
    p.add_argument("--state-dir", type=Path, default=defaults.state_dir)
    p.add_argument("--pools", type=Path, help="JSON file: this node's pool blocks")
    p.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent)
    p.add_argument("--max-pending", type=int, default=defaults.max_pending)
    p.add_argument("--resync-interval", type=float, default=defaults.resync_interval)
    a = p.parse_args(argv)
    settings = CniSettings(socket=a.socket, ovsdb=a.ovsdb, state_dir=a.state_dir, max_concurrent=a.max_concurrent,
                           max_pending=a.max_pending, resync_interval=a.resync_interval)
    return settings, a.pools


def load_ipam(settings: CniSettings, pools: Path | None) -> IpamService:
    return open_service(settings.state_dir / "leases.json",
                        blocks_from_json(json.loads(pools.read_text())) if pools else {})


async def serve(settings: CniSettings, pools: Path | None) -> None:
    ipam = load_ipam(settings, pools)
    ports = OvsPorts.standalone(settings.ovsdb, timeout=settings.ovs_timeout)
    await ports.start()
    server = CniServer(settings, Attacher(ports, ipam))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if pools:
        loop.add_signal_handler(signal.SIGHUP, lambda: ipam.set_blocks(blocks_from_json(json.loads(pools.read_text()))))
    try:
        await server.resync("start-up")
        await server.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.resync_interval)
            if not stop.is_set():
                await server.resync("periodic")
    finally:
        await server.stop()
        await ports.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, pools = parse_args(argv)
    asyncio.run(serve(settings, pools))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
