"""The DPU agent as the IPAM tests run it: the agent runtime plus the CNI server, composed exactly as the
contract of `dpf.agent.cni.wiring.serve_cni` says (`gather(runtime.run(), serve_cni(runtime, settings))`).
Run as a process inside the OVS netns, so it can be killed and restarted like the real agent. SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from dpf.agent.cni.settings import CniSettings
from dpf.agent.cni.wiring import serve_cni
from dpf.agent.runtime.runtime import AgentRuntime
from dpf.agent.runtime.settings import AgentSettings, TLSFiles


async def serve(args: argparse.Namespace) -> None:
    tls = TLSFiles(args.ca, args.cert, args.key, server_name="localhost") if args.ca else None
    runtime = AgentRuntime(AgentSettings(node=args.node, role="dpu", endpoints=(args.controller,),
                                         state_dir=args.state_dir / "runtime", tls=tls, insecure=tls is None,
                                         backoff_base=0.05, backoff_max=0.5, resync_period=0), [])
    cni = CniSettings(socket=args.cni_socket, ovsdb=args.ovsdb, state_dir=args.state_dir / "cni")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.ensure_future(runtime.run()), asyncio.ensure_future(serve_cni(runtime, cni))]
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({*tasks, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in (*tasks, waiter):
        task.cancel()
    await asyncio.gather(*tasks, waiter, return_exceptions=True)
    for task in tasks:
        if task in done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--controller", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--cni-socket", type=Path, required=True)
    p.add_argument("--ovsdb", required=True)
    p.add_argument("--ca", type=Path)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
